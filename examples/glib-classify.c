/* glib-classify: libdsa's asynchronous API in a GLib main loop. Opens a session on a model,
 * submits each text as its own request, watches the session's fd with g_unix_fd_add(), lets
 * dsa_session_dispatch() invoke the callbacks, and quits when every answer is in.
 *
 *   glib-classify MODEL TEXT...      (bus: $DSA_BUS_ADDRESS, else the system bus) */
#include <errno.h>
#include <glib-unix.h>
#include <glib.h>
#include <stdio.h>
#include <string.h>

#include <dsa/dsa.h>

struct app {
        GMainLoop *loop;
        unsigned pending;
        int status;
};

struct request {
        struct app *app;
        const char *text;
};

static void on_classified(struct dsa_session *s, uint64_t id, int status, struct dsa_result *result,
                          void *userdata) {
        struct request *req = userdata;
        struct app *app = req->app;

        if (status < 0) {
                fprintf(stderr, "'%s' failed: %s\n", req->text, strerror(-status));
                app->status = 1;
        } else {
                const struct dsa_classify_result *r = &result->classify[0];
                printf("%s\t%s\t%.4f\n", req->text, r->label ? r->label : "?",
                       r->probs[r->label_id]);
        }
        if (--app->pending == 0)
                g_main_loop_quit(app->loop);
}

static gboolean on_session_fd(gint fd, GIOCondition condition, gpointer userdata) {
        struct dsa_session *s = userdata;
        int r = dsa_session_dispatch(s);

        if (r < 0) {
                fprintf(stderr, "dispatch: %s\n", strerror(-r));
                return G_SOURCE_REMOVE;
        }
        return G_SOURCE_CONTINUE;
}

int main(int argc, char *argv[]) {
        struct app app = { .status = 0 };
        struct dsa_client *c = NULL;
        struct dsa_session *s = NULL;
        struct request *reqs;
        guint watch;
        int r;

        if (argc < 3) {
                fprintf(stderr, "usage: %s MODEL TEXT...\n", argv[0]);
                return 2;
        }
        r = dsa_client_new(NULL, &c);
        if (r < 0) {
                fprintf(stderr, "cannot connect to the bus: %s\n", strerror(-r));
                return 1;
        }
        r = dsa_session_open(c, argv[1], 0, 0, &s);
        if (r < 0) {
                const char *why = dsa_client_error_message(c);
                fprintf(stderr, "cannot open a session on '%s': %s\n", argv[1], why ? why : strerror(-r));
                dsa_client_free(c);
                return 1;
        }

        app.loop = g_main_loop_new(NULL, FALSE);
        reqs = g_new0(struct request, argc);
        watch = g_unix_fd_add(dsa_session_get_fd(s), G_IO_IN, on_session_fd, s);
        for (int i = 2; i < argc; i++) {
                reqs[i] = (struct request) { .app = &app, .text = argv[i] };
                r = dsa_session_submit_classify(s, &reqs[i].text, 1, on_classified, &reqs[i], NULL);
                if (r == -EAGAIN) {
                        /* Every slot busy: run the loop until some completions are dispatched. */
                        g_main_context_iteration(NULL, TRUE);
                        i--;
                        continue;
                }
                if (r < 0) {
                        fprintf(stderr, "cannot submit '%s': %s\n", argv[i], strerror(-r));
                        app.status = 1;
                        break;
                }
                app.pending++;
        }
        if (app.pending > 0)
                g_main_loop_run(app.loop);
        g_source_remove(watch);

        dsa_session_free(s);
        dsa_client_free(c);
        g_main_loop_unref(app.loop);
        g_free(reqs);
        return app.status;
}
