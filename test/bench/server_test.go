package bench

import (
	"strings"
	"testing"
	"time"
)

func TestParseStatCPU(t *testing.T) {
	// A command name with spaces and a parenthesis, as a process may set.
	line := "4242 (peerd (x) y) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 37 0 0 20 0 9 0 100 0 0\n"
	got, err := parseStatCPU([]byte(line))
	if err != nil {
		t.Fatal(err)
	}
	if want := 2870 * time.Millisecond; got != want {
		t.Errorf("CPU = %v, want %v (287 ticks)", got, want)
	}
	if _, err := parseStatCPU([]byte("4242 (peerd) S 1 2")); err == nil {
		t.Error("a short line parsed without error")
	}
}

func TestParseStatusMemory(t *testing.T) {
	status := "Name:\tpeerd\nVmPeak:\t 9000 kB\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\nThreads:\t9\n"
	got, err := parseStatusMemory([]byte(status))
	if err != nil {
		t.Fatal(err)
	}
	if got.RSS != 1<<20 || got.Peak != 2<<20 {
		t.Errorf("got %+v, want RSS 1 MiB, peak 2 MiB", got)
	}
	if _, err := parseStatusMemory([]byte("Name:\tpeerd\n")); err == nil || !strings.Contains(err.Error(), "VmRSS") {
		t.Errorf("error %v, want one naming VmRSS", err)
	}
}

func TestMetricValue(t *testing.T) {
	text := `# HELP go_memstats_alloc_bytes_total Total number of bytes allocated in heap until now, even if released already.
# TYPE go_memstats_alloc_bytes_total counter
go_memstats_alloc_bytes_total 1.234567e+08
go_memstats_alloc_bytes_total_other 5
`
	got, err := metricValue(text, "go_memstats_alloc_bytes_total")
	if err != nil || got != 1.234567e+08 {
		t.Errorf("got %v, %v; want 1.234567e+08", got, err)
	}
	if _, err := metricValue(text, "process_cpu_seconds_total"); err == nil {
		t.Error("a missing metric was found")
	}
}
