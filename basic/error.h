/* One-line error reasons. Library code (kernels/, engine/) returns -errno and may attach a
 * human-readable reason with dsa__error(); the caller that handles the error (cli/, daemon/)
 * prints dsa_error_message(). The message is thread-local, so workers never see each other's. */
#pragma once

#include "macro.h"

/* Stores the formatted reason for the calling thread and returns r (a negative errno), so a
 * failure reads: return dsa__error(-EBADMSG, "tensor '%s' runs past the end of the file", n); */
int dsa__error(int r, const char *fmt, ...) _printf_(2, 3);

/* The reason stored by the last dsa__error() on this thread, or strerror(-r) of the given code
 * when nothing was stored since dsa_error_clear(). Never NULL. */
const char *dsa_error_message(int r);

/* Forgets the stored reason; call before an operation whose reason you will print. */
void dsa_error_clear(void);
