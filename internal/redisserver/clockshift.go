package redisserver

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
)

// clockShiftSource is a tiny LD_PRELOAD shim that shifts the wall clock of
// the process it is loaded into by KEEPER_CLOCK_OFFSET_S seconds, or, when
// KEEPER_CLOCK_FILE names a file whose first 8 bytes (little endian) hold a
// positive time in µs since the epoch, stops the wall clock at that time
// (Config.ManualClock, Server.SetClock). The file is mapped once at load and
// read on every call, so a new time takes effect at once without a syscall.
// libfaketime would do, but it recurses through jemalloc inside redis-server
// and hangs at start; this shim calls the kernel directly and allocates
// nothing. Monotonic clocks are left alone, as Redis's timers need them.
const clockShiftSource = `
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static long long offset_s(void) {
	static int done = 0;
	static long long off = 0;
	if (!done) {
		const char *s = getenv("KEEPER_CLOCK_OFFSET_S");
		if (s) off = atoll(s);
		done = 1;
	}
	return off;
}

static const long long *fixed_us = 0;

__attribute__((constructor)) static void map_clock_file(void) {
	const char *p = getenv("KEEPER_CLOCK_FILE");
	if (!p) return;
	int fd = open(p, O_RDONLY);
	if (fd < 0) return;
	void *m = mmap(0, sizeof(long long), PROT_READ, MAP_SHARED, fd, 0);
	close(fd);
	if (m != MAP_FAILED) fixed_us = (const long long *)m;
}

int clock_gettime(clockid_t c, struct timespec *ts) {
	if (fixed_us && ts && (c == CLOCK_REALTIME || c == CLOCK_REALTIME_COARSE)) {
		long long us = __atomic_load_n(fixed_us, __ATOMIC_ACQUIRE);
		if (us > 0) {
			ts->tv_sec = us / 1000000;
			ts->tv_nsec = (us % 1000000) * 1000;
			return 0;
		}
	}
	int r = (int)syscall(SYS_clock_gettime, c, ts);
	if (r == 0 && (c == CLOCK_REALTIME || c == CLOCK_REALTIME_COARSE)) ts->tv_sec += offset_s();
	return r;
}

int gettimeofday(struct timeval *tv, void *tz) {
	struct timespec ts;
	(void)tz;
	int r = clock_gettime(CLOCK_REALTIME, &ts);
	if (r == 0 && tv) {
		tv->tv_sec = ts.tv_sec;
		tv->tv_usec = ts.tv_nsec / 1000;
	}
	return r;
}

time_t time(time_t *t) {
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	if (t) *t = ts.tv_sec;
	return ts.tv_sec;
}
`

var (
	shimOnce sync.Once
	shimPath string
	shimErr  error
)

// clockShiftLib compiles the shim once per source version (with the gcc that
// Go's cgo needs anyway) into the temp dir and returns its path.
func clockShiftLib() (string, error) {
	shimOnce.Do(func() {
		sum := sha256.Sum256([]byte(clockShiftSource))
		dir := filepath.Join(os.TempDir(), "keeper-clockshift-"+hex.EncodeToString(sum[:6]))
		lib := filepath.Join(dir, "clockshift.so")
		if _, err := os.Stat(lib); err == nil {
			shimPath = lib
			return
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			shimErr = fmt.Errorf("clock shim dir: %w", err)
			return
		}
		src := filepath.Join(dir, "clockshift.c")
		if err := os.WriteFile(src, []byte(clockShiftSource), 0o644); err != nil {
			shimErr = fmt.Errorf("clock shim source: %w", err)
			return
		}
		tmp := lib + fmt.Sprintf(".%d", os.Getpid())
		out, err := exec.Command("gcc", "-shared", "-fPIC", "-O2", "-o", tmp, src).CombinedOutput()
		if err != nil {
			shimErr = fmt.Errorf("compile clock shim (needs gcc): %v: %s", err, out)
			return
		}
		if err := os.Rename(tmp, lib); err != nil {
			shimErr = fmt.Errorf("install clock shim: %w", err)
			return
		}
		shimPath = lib
	})
	return shimPath, shimErr
}
