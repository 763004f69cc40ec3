/*
 * sandbox-probe-hog: a test probe started through the launcher, in the same sandbox as a
 * server, that tries to exhaust the machine (test/limits.test.ts):
 *   sandbox-probe-hog fork    fork without end (children sleep); reports how many it got
 *   sandbox-probe-hog alloc   allocate and touch memory without end, 1 MiB at a time
 * It reports JSON lines on stdout (the instance log) and, once refused, waits for SIGTERM.
 * It is pid 1 of its pid namespace, so SIGTERM needs a handler to be delivered at all.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void on_term(int sig)
{
	(void)sig;
	_exit(0);
}

static void report(const char *what, long n, int err)
{
	printf("{\"hog\":\"%s\",\"count\":%ld,\"errno\":\"%s\"}\n", what, n,
	       err ? strerrorname_np(err) : "");
	fflush(stdout);
}

static _Noreturn void wait_for_term(void)
{
	for (;;)
		pause();
}

static int hog_fork(void)
{
	long got = 0, refused = 0;
	int last = 0;
	struct timespec t0, t;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	/* keep trying for 2 s after the first refusal: a bomb does not give up */
	for (;;) {
		pid_t pid = fork();
		if (pid == 0) {
			signal(SIGTERM, SIG_DFL);
			wait_for_term();
		}
		if (pid > 0) {
			got++;
		} else {
			if (!refused)
				clock_gettime(CLOCK_MONOTONIC, &t0);
			refused++;
			last = errno;
			clock_gettime(CLOCK_MONOTONIC, &t);
			if (t.tv_sec - t0.tv_sec >= 2)
				break;
		}
	}
	report("fork", got, last);
	printf("{\"hog\":\"fork-refused\",\"count\":%ld}\n", refused);
	fflush(stdout);
	wait_for_term();
	return 0;
}

static _Noreturn void hog_alloc(void)
{
	long mib = 0;
	for (;;) {
		char *p = malloc(1 << 20);
		if (!p) {
			report("alloc", mib, errno);
			wait_for_term();
		}
		memset(p, 0x5a, 1 << 20);
		mib++;
		if (mib % 16 == 0)
			report("alloc-progress", mib, 0);
	}
}

int main(int argc, char **argv)
{
	if (signal(SIGTERM, on_term) == SIG_ERR) {
		perror("signal");
		return 2;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc == 2 && !strcmp(argv[1], "fork"))
		return hog_fork();
	if (argc == 2 && !strcmp(argv[1], "alloc"))
		hog_alloc();
	fprintf(stderr, "usage: sandbox-probe-hog fork|alloc\n");
	return 2;
}
