/*
 * banyan.h: report a program's own metrics to banyan.
 *
 * These functions are exported by libbanyan_interpose.so, which `banyan-run` preloads into every
 * process of a job. What they record travels with the library's other counters to the node's
 * agent at every update (by default once a second, and at exit) and is merged into the job's
 * metrics, under the name given, across every rank and node of the job.
 *
 * Linking: the program does not link against the library. Declare the functions weak, and call
 * them only when they are there, so that the same binary runs with and without banyan-run:
 *
 *     #include "banyan.h"
 *     ...
 *     if (banyan_counter_add) banyan_counter_add("solver_iterations_total", 1);
 *     if (banyan_gauge_set)   banyan_gauge_set("solver_residual", r);
 *
 * (BANYAN_WEAK below makes the declarations weak with GCC and Clang.) Without banyan-run's
 * environment the library accepts the calls and reports nothing.
 *
 * Names: valid Prometheus metric names, [a-zA-Z_:][a-zA-Z0-9_:]*, at most 200 bytes, not starting
 * with "banyan_" (the library's own series). A name keeps the kind of its first use: a counter
 * cannot later be set as a gauge, nor the reverse. At most 1000 names per process. Counter
 * names should end in "_total", as Prometheus expects.
 *
 * Cost: each call takes a lock and may allocate on a name's first use; call them per iteration or
 * per phase, not per element.
 *
 * Threads: both functions may be called from any thread. They are not async-signal-safe.
 */
#ifndef BANYAN_H
#define BANYAN_H

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__) || defined(__clang__)
#define BANYAN_WEAK __attribute__((weak))
#else
#define BANYAN_WEAK
#endif

/*
 * Adds `value` to the counter `name` (created at 0 on first use).
 * Returns 0 on success, -1 when the name is invalid or reserved, the value is negative, NaN or
 * infinite, the name is already a gauge, or the process has 1000 names already.
 */
BANYAN_WEAK int banyan_counter_add(const char *name, double value);

/*
 * Sets the gauge `name` to `value`. Between two updates the agent receives the last value, and
 * the minimum, maximum, sum and count of all values set.
 * Returns 0 on success, -1 when the name is invalid or reserved, the value is NaN or infinite,
 * the name is already a counter, or the process has 1000 names already.
 */
BANYAN_WEAK int banyan_gauge_set(const char *name, double value);

#ifdef __cplusplus
}
#endif

#endif /* BANYAN_H */
