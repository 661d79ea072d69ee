/*
 * exact: an MPI program whose communication and file I/O are known exactly from its arguments, so
 * that a test can compare what a tool counted with what really happened.
 *
 *   exact ITER BYTES [DIR]
 *
 * Every rank (at least 2 ranks):
 *   1. MPI_Init, MPI_Comm_rank, MPI_Comm_size;
 *   2. one MPI_Bcast of 64 MPI_BYTEs from rank 0;
 *   3. ITER times:
 *      - a ring exchange: MPI_Send of BYTES MPI_BYTEs to (rank+1)%size and MPI_Recv from
 *        (rank-1+size)%size into a buffer of 2*BYTES MPI_BYTEs (oversized: the message is BYTES).
 *        Even ranks send first, odd ranks receive first. On even iterations the MPI_Recv gets a real
 *        status and the rank calls MPI_Get_count on it; on odd iterations it passes MPI_STATUS_IGNORE;
 *      - one MPI_Allreduce (MPI_SUM) of one MPI_INT;
 *      - one MPI_Barrier;
 *   4. file I/O on a file of its own in DIR (default: $TMPDIR, else /tmp), removed at the end:
 *      ITER write(2) calls of BYTES bytes, then lseek(2) to the start, then ITER read(2) calls of
 *      BYTES bytes (no read to end of file);
 *   5. MPI_Finalize.
 * Payloads are checked on arrival; any mismatch, short write or short read aborts the run.
 *
 * Rank 0 prints, before MPI_Finalize, one line starting with `{"exact":` holding the counts as JSON.
 * Byte conventions: MPI_Send counts count*size sent; MPI_Recv counts the size of the message received
 * (from its status), not the buffer's size; MPI_Bcast counts 64 sent at the root and 64 received
 * elsewhere; MPI_Allreduce counts sizeof(int) sent and sizeof(int) received on every rank; the other
 * functions count calls only. "io" counts this program's own write(2)/read(2) calls on its file only
 * (not the MPI library's, and not the JSON line on stdout).
 *
 * Every rank also tallies what it did as it goes and checks the tally against the same formula
 * before MPI_Finalize, so the printed numbers are the ones performed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { F_INIT, F_COMM_RANK, F_COMM_SIZE, F_BCAST, F_SEND, F_RECV, F_GET_COUNT, F_ALLREDUCE,
       F_BARRIER, F_FINALIZE, NFUNC };
static const char *const FUNC_NAMES[NFUNC] = {
    "MPI_Init", "MPI_Comm_rank", "MPI_Comm_size", "MPI_Bcast", "MPI_Send", "MPI_Recv",
    "MPI_Get_count", "MPI_Allreduce", "MPI_Barrier", "MPI_Finalize",
};
enum { IO_WRITE, IO_READ, NIO };
static const char *const IO_NAMES[NIO] = {"write", "read"};

enum { BCAST_BYTES = 64 };

struct count {
    unsigned long long calls, sent, recv;
};
struct counts {
    struct count mpi[NFUNC];
    struct count io[NIO]; /* sent = bytes written, recv = bytes read */
};

static int rank = -1;

static void die(const char *what)
{
    fprintf(stderr, "exact: rank %d: %s\n", rank, what);
    fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 3);
    exit(3);
}

static void check(int rc, const char *what)
{
    if (rc != MPI_SUCCESS)
        die(what);
}

static void tally(struct count *c, unsigned long long sent, unsigned long long recv)
{
    c->calls += 1;
    c->sent += sent;
    c->recv += recv;
}

/* What rank r of size ranks does, from the arguments alone. */
static void expected(int r, unsigned long long iter, unsigned long long bytes, struct counts *e)
{
    memset(e, 0, sizeof *e);
    e->mpi[F_INIT].calls = 1;
    e->mpi[F_COMM_RANK].calls = 1;
    e->mpi[F_COMM_SIZE].calls = 1;
    e->mpi[F_BCAST].calls = 1;
    if (r == 0)
        e->mpi[F_BCAST].sent = BCAST_BYTES;
    else
        e->mpi[F_BCAST].recv = BCAST_BYTES;
    e->mpi[F_SEND] = (struct count){iter, iter * bytes, 0};
    e->mpi[F_RECV] = (struct count){iter, 0, iter * bytes};
    e->mpi[F_GET_COUNT].calls = (iter + 1) / 2; /* iterations 0, 2, 4, ... */
    e->mpi[F_ALLREDUCE] = (struct count){iter, iter * sizeof(int), iter * sizeof(int)};
    e->mpi[F_BARRIER].calls = iter;
    e->mpi[F_FINALIZE].calls = 1;
    e->io[IO_WRITE] = (struct count){iter, iter * bytes, 0};
    e->io[IO_READ] = (struct count){iter, 0, iter * bytes};
}

static void print_counts(const struct counts *c)
{
    printf("{\"mpi\":{");
    for (int f = 0; f < NFUNC; f++)
        printf("%s\"%s\":{\"calls\":%llu,\"sent_bytes\":%llu,\"recv_bytes\":%llu}", f ? "," : "",
               FUNC_NAMES[f], c->mpi[f].calls, c->mpi[f].sent, c->mpi[f].recv);
    printf("},\"io\":{");
    for (int i = 0; i < NIO; i++)
        printf("%s\"%s\":{\"calls\":%llu,\"bytes\":%llu}", i ? "," : "", IO_NAMES[i],
               c->io[i].calls, i == IO_WRITE ? c->io[i].sent : c->io[i].recv);
    printf("}}");
}

static void add(struct counts *to, const struct counts *c)
{
    for (int f = 0; f < NFUNC; f++) {
        to->mpi[f].calls += c->mpi[f].calls;
        to->mpi[f].sent += c->mpi[f].sent;
        to->mpi[f].recv += c->mpi[f].recv;
    }
    for (int i = 0; i < NIO; i++) {
        to->io[i].calls += c->io[i].calls;
        to->io[i].sent += c->io[i].sent;
        to->io[i].recv += c->io[i].recv;
    }
}

static unsigned long long parse(const char *s, const char *name, unsigned long long max)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-' || v > max) {
        fprintf(stderr, "exact: bad %s %s (0 to %llu)\n", name, s, max);
        exit(2);
    }
    return v;
}

/* The byte a message carries at offset i: depends on the sender, the iteration and the offset. */
static unsigned char pattern(int sender, unsigned long long it, unsigned long long i)
{
    return (unsigned char)(sender * 31 + it * 7 + i);
}

static void file_io(const char *dir, unsigned long long iter, unsigned long long bytes,
                    unsigned char *buf, struct counts *did)
{
    char path[4096];
    if (snprintf(path, sizeof path, "%s/exact.%ld.%d", dir, (long)getpid(), rank) >= (int)sizeof path)
        die("file path too long");
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        perror(path);
        die("cannot create the I/O file");
    }
    for (unsigned long long it = 0; it < iter; it++) {
        for (unsigned long long i = 0; i < bytes; i++)
            buf[i] = pattern(rank, it, i);
        ssize_t n = write(fd, buf, bytes);
        if (n < 0 || (unsigned long long)n != bytes)
            die("short write");
        tally(&did->io[IO_WRITE], (unsigned long long)n, 0);
    }
    if (lseek(fd, 0, SEEK_SET) != 0)
        die("lseek");
    for (unsigned long long it = 0; it < iter; it++) {
        memset(buf, 0, bytes);
        ssize_t n = read(fd, buf, bytes);
        if (n < 0 || (unsigned long long)n != bytes)
            die("short read");
        tally(&did->io[IO_READ], 0, (unsigned long long)n);
        for (unsigned long long i = 0; i < bytes; i++)
            if (buf[i] != pattern(rank, it, i))
                die("file content differs from what was written");
    }
    close(fd);
    unlink(path);
}

int main(int argc, char **argv)
{
    struct counts did;
    memset(&did, 0, sizeof did);
    int size = 0;

    check(MPI_Init(&argc, &argv), "MPI_Init");
    tally(&did.mpi[F_INIT], 0, 0);
    check(MPI_Comm_rank(MPI_COMM_WORLD, &rank), "MPI_Comm_rank");
    tally(&did.mpi[F_COMM_RANK], 0, 0);
    check(MPI_Comm_size(MPI_COMM_WORLD, &size), "MPI_Comm_size");
    tally(&did.mpi[F_COMM_SIZE], 0, 0);

    if (argc < 3 || argc > 4) {
        if (rank == 0)
            fprintf(stderr, "usage: exact ITER BYTES [DIR]\n");
        MPI_Finalize();
        return 2;
    }
    /* BYTES*2 must fit an int count; ITER*BYTES must not overflow. */
    unsigned long long iter = parse(argv[1], "ITER", 1000000);
    unsigned long long bytes = parse(argv[2], "BYTES", INT_MAX / 2);
    const char *dir = argc == 4 ? argv[3] : getenv("TMPDIR");
    if (!dir || !*dir)
        dir = "/tmp";
    if (size < 2) {
        fprintf(stderr, "exact: needs at least 2 ranks, got %d (is the launcher's PMI right?)\n", size);
        MPI_Finalize();
        return 2;
    }

    /* Rank 0 broadcasts 64 known bytes. */
    unsigned char head[BCAST_BYTES];
    for (int i = 0; i < BCAST_BYTES; i++)
        head[i] = rank == 0 ? (unsigned char)(0xA0 + i) : 0;
    check(MPI_Bcast(head, BCAST_BYTES, MPI_BYTE, 0, MPI_COMM_WORLD), "MPI_Bcast");
    tally(&did.mpi[F_BCAST], rank == 0 ? BCAST_BYTES : 0, rank == 0 ? 0 : BCAST_BYTES);
    for (int i = 0; i < BCAST_BYTES; i++)
        if (head[i] != (unsigned char)(0xA0 + i))
            die("MPI_Bcast delivered other bytes");

    /* At least 1 byte each, so that BYTES=0 works. */
    unsigned char *sendbuf = malloc(bytes ? bytes : 1);
    unsigned char *recvbuf = malloc(bytes ? 2 * bytes : 1);
    if (!sendbuf || !recvbuf)
        die("out of memory");
    int next = (rank + 1) % size, prev = (rank - 1 + size) % size;
    int sum_ranks = size * (size - 1) / 2;

    for (unsigned long long it = 0; it < iter; it++) {
        for (unsigned long long i = 0; i < bytes; i++)
            sendbuf[i] = pattern(rank, it, i);
        memset(recvbuf, 0, bytes ? 2 * bytes : 1);
        MPI_Status status;
        int want_status = it % 2 == 0;
        for (int step = 0; step < 2; step++) {
            int sending = (step == 0) == (rank % 2 == 0); /* even ranks send first */
            if (sending) {
                check(MPI_Send(sendbuf, (int)bytes, MPI_BYTE, next, (int)(it % 32768), MPI_COMM_WORLD),
                      "MPI_Send");
                tally(&did.mpi[F_SEND], bytes, 0);
            } else {
                check(MPI_Recv(recvbuf, (int)(2 * bytes), MPI_BYTE, prev, (int)(it % 32768),
                               MPI_COMM_WORLD, want_status ? &status : MPI_STATUS_IGNORE),
                      "MPI_Recv");
                /* The message is BYTES long whatever the buffer: that is what is counted. */
                tally(&did.mpi[F_RECV], 0, bytes);
            }
        }
        if (want_status) {
            int got = -1;
            check(MPI_Get_count(&status, MPI_BYTE, &got), "MPI_Get_count");
            tally(&did.mpi[F_GET_COUNT], 0, 0);
            if (got < 0 || (unsigned long long)got != bytes)
                die("MPI_Get_count: the message received is not BYTES long");
        }
        for (unsigned long long i = 0; i < bytes; i++)
            if (recvbuf[i] != pattern(prev, it, i))
                die("MPI_Recv delivered other bytes");
        for (unsigned long long i = bytes; i < 2 * bytes; i++)
            if (recvbuf[i] != 0)
                die("MPI_Recv wrote past the message");

        int mine = rank + (int)(it % 1000), total = -1;
        check(MPI_Allreduce(&mine, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD), "MPI_Allreduce");
        tally(&did.mpi[F_ALLREDUCE], sizeof(int), sizeof(int));
        if (total != sum_ranks + size * (int)(it % 1000))
            die("MPI_Allreduce gave a wrong sum");

        check(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier");
        tally(&did.mpi[F_BARRIER], 0, 0);
    }
    free(sendbuf);

    file_io(dir, iter, bytes, recvbuf, &did);
    free(recvbuf);

    /* MPI_Finalize is counted before it is called: nothing can be checked after it. */
    tally(&did.mpi[F_FINALIZE], 0, 0);
    struct counts want;
    expected(rank, iter, bytes, &want);
    if (memcmp(&did, &want, sizeof did) != 0)
        die("what this rank did differs from the formula (a bug in exact.c)");

    if (rank == 0) {
        struct counts total, c;
        memset(&total, 0, sizeof total);
        printf("{\"exact\":{\"iter\":%llu,\"bytes\":%llu,\"size\":%d},\"ranks\":[", iter, bytes, size);
        for (int r = 0; r < size; r++) {
            expected(r, iter, bytes, &c);
            add(&total, &c);
            printf("%s{\"rank\":%d,\"counts\":", r ? "," : "", r);
            print_counts(&c);
            printf("}");
        }
        printf("],\"total\":");
        print_counts(&total);
        printf("}\n");
        fflush(stdout);
    }

    check(MPI_Finalize(), "MPI_Finalize");
    return 0;
}
