/*
 * overhead: what an intercepted MPI call costs, for scripts/bench-interpose.
 *
 *   overhead CALLS PINGPONGS
 *
 * Rank 0 times CALLS calls of MPI_Barrier(MPI_COMM_SELF) (a call that does almost nothing, so the
 * time is the call's own cost), then ranks 0 and 1 time PINGPONGS round trips of an 8-byte message
 * (MPI_Send/MPI_Recv). Rank 0 prints one line: `barrier_ns X pingpong_us Y` (per call, per round
 * trip). Best of 5 repetitions, so a preempted repetition does not count.
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    long calls = argc > 1 ? atol(argv[1]) : 10000000;
    long pings = argc > 2 ? atol(argv[2]) : 100000;
    double best_call = 1e300, best_ping = 1e300;
    char msg[8] = {0};
    for (int rep = 0; rep < 5; rep++) {
        if (rank == 0) {
            double t0 = now_ns();
            for (long i = 0; i < calls; i++) MPI_Barrier(MPI_COMM_SELF);
            double per = (now_ns() - t0) / calls;
            if (per < best_call) best_call = per;
        }
        MPI_Barrier(MPI_COMM_WORLD);
        if (size >= 2 && rank < 2) {
            double t0 = now_ns();
            for (long i = 0; i < pings; i++) {
                if (rank == 0) {
                    MPI_Send(msg, 8, MPI_BYTE, 1, 0, MPI_COMM_WORLD);
                    MPI_Recv(msg, 8, MPI_BYTE, 1, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
                } else {
                    MPI_Recv(msg, 8, MPI_BYTE, 0, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
                    MPI_Send(msg, 8, MPI_BYTE, 0, 0, MPI_COMM_WORLD);
                }
            }
            double per = (now_ns() - t0) / pings / 1000.0;
            if (per < best_ping) best_ping = per;
        }
        MPI_Barrier(MPI_COMM_WORLD);
    }
    if (rank == 0) printf("barrier_ns %.2f pingpong_us %.3f\n", best_call, best_ping);
    MPI_Finalize();
    return 0;
}
