/* org.dsa.Model1 on /org/dsa/Daemon1/models/<name> (docs/dbus-api.md): one object per model of
 * the store, found and enumerated from the registry on demand, plus the model-name checks and
 * the mapping of registry errors to org.dsa.Error.* names that every handler taking a model
 * name shares. */
#include <errno.h>
#include <string.h>
#include <syslog.h>

#include "api-internal.h"
#include "basic/error.h"

/* ---- helpers */

int dsad__api_check_model_name(const char *name, sd_bus_error *error) {
        if (!dsad_model_name_valid(name))
                return sd_bus_error_setf(error, ERROR_INVALID_ARGS,
                                         "Invalid model name '%.80s': 1-64 characters of [A-Za-z0-9_.-], "
                                         "not starting with '.'",
                                         name);
        return 0;
}

int dsad__api_model_error(int r, const char *name, sd_bus_error *error) {
        switch (r) {
        case -EINVAL:
                if (dsad__api_check_model_name(name, error) < 0)
                        return -EINVAL;
                return sd_bus_error_setf(error, ERROR_INVALID_ARGS, "%s", dsa_error_message(r));
        case -ENOENT:
                return sd_bus_error_setf(error, ERROR_NO_SUCH_MODEL, "No model '%s' in the store", name);
        case -ESRCH:
                return sd_bus_error_setf(error, ERROR_NOT_LOADED, "Model '%s' is not loaded", name);
        case -ENOMEM:
                return -ENOMEM;
        default:
                return sd_bus_error_setf(error, ERROR_BAD_MODEL, "Model '%s' does not load: %s", name,
                                         dsa_error_message(r));
        }
}

char *dsad__api_model_path(const char *name) {
        char *p = NULL;
        if (sd_bus_path_encode(MODELS_PATH, name, &p) < 0)
                return NULL;
        return p;
}

/* ---- org.dsa.Model1 properties (userdata: the struct dsad_model found for the path) */

static int model_property_get(sd_bus *bus, const char *path, const char *interface, const char *property,
                              sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        struct dsad_model_info i;
        int r;

        if (strcmp(property, "Variants") == 0 || strcmp(property, "CurrentVariant") == 0 ||
            strcmp(property, "VariantReason") == 0)
                return dsad__api_model_policy_get(userdata, property, reply);
        r = dsad_model_info(userdata, &i);
        if (r < 0)
                return r;
        if (strcmp(property, "Name") == 0)
                return sd_bus_message_append(reply, "s", i.name);
        if (strcmp(property, "Path") == 0)
                return sd_bus_message_append(reply, "s", i.path);
        if (strcmp(property, "Loaded") == 0)
                return sd_bus_message_append(reply, "b", i.loaded);
        if (strcmp(property, "Architecture") == 0)
                return sd_bus_message_append(reply, "s", i.architecture);
        if (strcmp(property, "HiddenSize") == 0)
                return sd_bus_message_append(reply, "u", i.hidden_size);
        if (strcmp(property, "Layers") == 0)
                return sd_bus_message_append(reply, "u", i.layers);
        if (strcmp(property, "FileSize") == 0)
                return sd_bus_message_append(reply, "t", i.file_size);
        if (strcmp(property, "Labels") == 0) {
                r = sd_bus_message_open_container(reply, 'a', "s");
                for (uint32_t k = 0; r >= 0 && k < i.n_labels; k++)
                        r = sd_bus_message_append(reply, "s", i.labels[k]);
                if (r < 0)
                        return r;
                return sd_bus_message_close_container(reply);
        }
        return -ENOENT;
}

static int model_find(sd_bus *bus, const char *path, const char *interface, void *userdata, void **ret_found,
                      sd_bus_error *error) {
        struct dsad *d = userdata;
        struct dsad_model *m;
        char *name = NULL;
        int r;

        r = sd_bus_path_decode(path, MODELS_PATH, &name);
        if (r <= 0)
                return 0;
        r = dsad_registry_find(d, name, &m);
        free(name);
        if (r < 0)
                return 0;
        *ret_found = m;
        return 1;
}

static int model_enumerate(sd_bus *bus, const char *prefix, void *userdata, char ***ret_nodes,
                           sd_bus_error *error) {
        struct dsad *d = userdata;
        char **nodes;
        size_t n = 0, k = 0;

        (void) dsad_registry_scan(d);
        for (struct dsad_model *m = d->models; m; m = dsad_model_next(m))
                n++;
        nodes = calloc(n + 1, sizeof(char *));
        if (!nodes)
                return -ENOMEM;
        for (struct dsad_model *m = d->models; m; m = dsad_model_next(m)) {
                nodes[k] = dsad__api_model_path(dsad_model_name(m));
                if (!nodes[k]) {
                        strv_free(nodes);
                        return -ENOMEM;
                }
                k++;
        }
        *ret_nodes = nodes;
        return 0;
}

static const sd_bus_vtable model_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_PROPERTY("Name", "s", model_property_get, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("Path", "s", model_property_get, 0, 0),
        SD_BUS_PROPERTY("Loaded", "b", model_property_get, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("Architecture", "s", model_property_get, 0, 0),
        SD_BUS_PROPERTY("HiddenSize", "u", model_property_get, 0, 0),
        SD_BUS_PROPERTY("Layers", "u", model_property_get, 0, 0),
        SD_BUS_PROPERTY("Labels", "as", model_property_get, 0, 0),
        SD_BUS_PROPERTY("FileSize", "t", model_property_get, 0, 0),
        SD_BUS_PROPERTY("Variants", "as", model_property_get, 0, 0),
        SD_BUS_PROPERTY("CurrentVariant", "s", model_property_get, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("VariantReason", "s", model_property_get, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_VTABLE_END,
};

/* ---- setup */

int dsad__api_model_add(struct dsad *d, struct dsad_api *api) {
        int r;

        r = sd_bus_add_fallback_vtable(d->bus, &api->slot_models, MODELS_PATH, MODEL_INTERFACE,
                                       model_vtable, model_find, d);
        if (r < 0)
                return dsad_log_errno(LOG_ERR, r, "Failed to add the model objects: %m");
        r = sd_bus_add_node_enumerator(d->bus, &api->slot_nodes, MODELS_PATH, model_enumerate, d);
        if (r < 0)
                return dsad_log_errno(LOG_ERR, r, "Failed to add the model enumerator: %m");
        return 0;
}
