// Read bandwidth of this machine's memory: the roofline of batch-1 decode, which reads every
// weight it uses once per token. Used by docs/BENCHMARKS.md to put pregate's and llama.cpp's
// effective GB/s on one scale (issue 16, part 5).
//
// Each of T threads sums its own contiguous share of a buffer much larger than the L3 (default
// 1 GiB) with 4 independent vector accumulators (the widest loads -march=native gives), reps times;
// the threads start each pass together (a barrier) and a pass's GB/s is the buffer's bytes over the
// slowest thread's time. Prints the median and the best pass.
//
//	cc -O2 -march=native -pthread -o /tmp/membw scripts/peer/membw.c
//	/tmp/membw 1 && /tmp/membw 2          # threads [MiB [passes]]
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef float vf __attribute__((vector_size(64), aligned(64)));

static size_t n_floats;
static int n_threads, passes;
static float *buf;
static pthread_barrier_t barrier;
static double *pass_seconds; // [pass][thread]
static volatile float sink;

static double now(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static float sum(const float *p, size_t n) {
	const vf *v = (const vf *)p;
	size_t nv = n / 16;
	vf a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
	for (size_t i = 0; i + 4 <= nv; i += 4) {
		a0 += v[i];
		a1 += v[i + 1];
		a2 += v[i + 2];
		a3 += v[i + 3];
	}
	vf a = a0 + a1 + a2 + a3;
	float s = 0;
	for (int i = 0; i < 16; i++) {
		s += a[i];
	}
	return s;
}

static void *worker(void *arg) {
	int t = (int)(intptr_t)arg;
	size_t share = n_floats / n_threads / 64 * 64;
	const float *p = buf + (size_t)t * share;
	float s = 0;
	for (int r = 0; r < passes; r++) {
		pthread_barrier_wait(&barrier);
		double t0 = now();
		s += sum(p, share);
		pass_seconds[r * n_threads + t] = now() - t0;
	}
	sink = s;
	return NULL;
}

static int cmp(const void *a, const void *b) {
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

int main(int argc, char **argv) {
	n_threads = argc > 1 ? atoi(argv[1]) : 1;
	size_t mib = argc > 2 ? (size_t)atol(argv[2]) : 1024;
	passes = argc > 3 ? atoi(argv[3]) : 20;
	if (n_threads < 1 || n_threads > 256 || mib < 1 || passes < 1) {
		fprintf(stderr, "membw: usage: membw THREADS [MiB [PASSES]] (THREADS 1..256, MiB and PASSES >= 1)\n");
		return 2;
	}
	n_floats = mib << 18;
	if (posix_memalign((void **)&buf, 64, n_floats * sizeof(float)) != 0) {
		fprintf(stderr, "membw: cannot allocate %zu MiB\n", mib);
		return 1;
	}
	for (size_t i = 0; i < n_floats; i++) { // touch every page, and no denormals
		buf[i] = 1.0f;
	}
	pass_seconds = calloc((size_t)passes * n_threads, sizeof(double));
	pthread_barrier_init(&barrier, NULL, n_threads);
	pthread_t th[256];
	for (int t = 1; t < n_threads; t++) {
		pthread_create(&th[t], NULL, worker, (void *)(intptr_t)t);
	}
	worker((void *)0);
	for (int t = 1; t < n_threads; t++) {
		pthread_join(th[t], NULL);
	}
	size_t bytes = n_floats / n_threads / 64 * 64 * n_threads * sizeof(float);
	double *gbs = calloc(passes, sizeof(double));
	for (int r = 0; r < passes; r++) {
		double slowest = 0;
		for (int t = 0; t < n_threads; t++) {
			if (pass_seconds[r * n_threads + t] > slowest) {
				slowest = pass_seconds[r * n_threads + t];
			}
		}
		gbs[r] = bytes / slowest / 1e9;
	}
	qsort(gbs, passes, sizeof(double), cmp);
	printf("{\"threads\":%d,\"mib\":%zu,\"passes\":%d,\"read_gb_per_s_median\":%.1f,\"read_gb_per_s_best\":%.1f,\"read_gb_per_s_worst\":%.1f}\n",
		n_threads, mib, passes, gbs[passes / 2], gbs[passes - 1], gbs[0]);
	return 0;
}
