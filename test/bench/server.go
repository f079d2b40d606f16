package bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// userHZ is the unit of utime and stime in /proc/<pid>/stat. Linux fixes it
// at 100 for user space on every architecture (the kernel's own HZ is
// converted), so it needs no sysconf call.
const userHZ = 100

// Server is a server binary under test, started on a config dir with
// plaintext gRPC and monitoring listeners on loopback.
type Server struct {
	Name    string
	XDSAddr string
	monAddr string
	cmd     *exec.Cmd
	logPath string
	exited  chan struct{}
	waitErr error
}

// StartServer runs the target (peerd or the baseline: both take these
// flags) on configDir. Its output goes to a log file in workDir.
func StartServer(t Target, clusterName, configDir, workDir string) (*Server, error) {
	return startServer(t, clusterName, configDir, workDir, "")
}

// startServer is StartServer with the TLS listener on listen ("" for none)
// and t.Args before the common flags.
func startServer(t Target, clusterName, configDir, workDir, listen string) (*Server, error) {
	xdsAddr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	monAddr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	args := slices.Concat(t.Args, []string{"--cluster-name", clusterName, "--config-dir", configDir, "--listen", listen,
		"--plaintext-listen", xdsAddr, "--monitoring-listen", monAddr})
	name := t.Name
	logPath := filepath.Join(workDir, name+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(t.Binary, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("starting %s: %w", t.Binary, err)
	}
	s := &Server{Name: name, XDSAddr: xdsAddr, monAddr: monAddr, cmd: cmd, logPath: logPath, exited: make(chan struct{})}
	go func() {
		s.waitErr = cmd.Wait()
		logFile.Close()
		close(s.exited)
	}()
	return s, nil
}

// freeAddr picks a free loopback port. Another process could take it
// before the server binds it; the server then fails at start, visibly.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// WaitReady polls /readyz until it answers 200.
func (s *Server) WaitReady(ctx context.Context) error {
	for {
		code, body, err := s.get("/readyz")
		if err == nil && code == http.StatusOK {
			return nil
		}
		select {
		case <-s.exited:
			return fmt.Errorf("%s exited before it was ready (%v); log: %s\n%s", s.Name, s.waitErr, s.logPath, s.logTail())
		case <-ctx.Done():
			return fmt.Errorf("%s not ready (last /readyz: %d %q, %v): %w; log: %s", s.Name, code, body, err, ctx.Err(), s.logPath)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (s *Server) get(path string) (int, string, error) {
	resp, err := http.Get("http://" + s.monAddr + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

func (s *Server) logTail() string {
	data, _ := os.ReadFile(s.logPath)
	if len(data) > 4000 {
		data = data[len(data)-4000:]
	}
	return string(data)
}

// Stop sends SIGTERM and waits, then kills the server if it lingers.
func (s *Server) Stop() {
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(10 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.exited
	}
}

// Usage is what the server process has consumed so far.
type Usage struct {
	CPU        time.Duration // user + system time
	AllocBytes float64       // go_memstats_alloc_bytes_total
}

// Usage reads the CPU time from /proc and the bytes allocated from
// /metrics. The scrape itself allocates in the server; callers take Usage
// once before and once after a series of changes, so that cost is spread.
func (s *Server) Usage() (Usage, error) {
	cpu, err := s.CPU()
	if err != nil {
		return Usage{}, err
	}
	code, body, err := s.get("/metrics")
	if err != nil {
		return Usage{}, err
	}
	if code != http.StatusOK {
		return Usage{}, fmt.Errorf("%s /metrics: status %d", s.Name, code)
	}
	alloc, err := metricValue(body, "go_memstats_alloc_bytes_total")
	if err != nil {
		return Usage{}, fmt.Errorf("%s /metrics: %w", s.Name, err)
	}
	return Usage{CPU: cpu, AllocBytes: alloc}, nil
}

// metricValue finds an unlabelled sample in Prometheus text format.
func metricValue(text, name string) (float64, error) {
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 0, 1<<16), 1<<20)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), name+" ")
		if !ok {
			continue
		}
		return strconv.ParseFloat(strings.TrimSpace(rest), 64)
	}
	return 0, fmt.Errorf("no sample %s", name)
}

// CPU is the process's user + system time, from /proc/<pid>/stat.
func (s *Server) CPU() (time.Duration, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", s.cmd.Process.Pid))
	if err != nil {
		return 0, fmt.Errorf("%s CPU time (this benchmark needs Linux /proc): %w", s.Name, err)
	}
	return parseStatCPU(data)
}

// parseStatCPU reads utime and stime (fields 14 and 15) of a
// /proc/<pid>/stat line. The command name (field 2) may hold spaces and
// parentheses, so fields are counted after its last ')'.
func parseStatCPU(data []byte) (time.Duration, error) {
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, errors.New("/proc stat: no command name")
	}
	fields := strings.Fields(string(data[i+1:]))
	// fields[0] is field 3 (state): utime is field 14, stime field 15.
	if len(fields) < 13 {
		return 0, fmt.Errorf("/proc stat: %d fields after the command name, want at least 13", len(fields))
	}
	var ticks int64
	for _, f := range fields[11:13] {
		v, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc stat: %w", err)
		}
		ticks += v
	}
	return time.Duration(ticks) * time.Second / userHZ, nil
}

// Memory is the server's resident set: now and the peak.
type Memory struct {
	RSS, Peak uint64 // bytes
}

// Memory reads VmRSS and VmHWM from /proc/<pid>/status.
func (s *Server) Memory() (Memory, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", s.cmd.Process.Pid))
	if err != nil {
		return Memory{}, fmt.Errorf("%s memory (this benchmark needs Linux /proc): %w", s.Name, err)
	}
	return parseStatusMemory(data)
}

func parseStatusMemory(data []byte) (Memory, error) {
	var m Memory
	found := 0
	for line := range strings.Lines(string(data)) {
		var dst *uint64
		switch {
		case strings.HasPrefix(line, "VmRSS:"):
			dst = &m.RSS
		case strings.HasPrefix(line, "VmHWM:"):
			dst = &m.Peak
		default:
			continue
		}
		f := strings.Fields(line)
		if len(f) != 3 || f[2] != "kB" {
			return Memory{}, fmt.Errorf("/proc status: unexpected line %q", strings.TrimSpace(line))
		}
		kb, err := strconv.ParseUint(f[1], 10, 64)
		if err != nil {
			return Memory{}, fmt.Errorf("/proc status: %q: %w", strings.TrimSpace(line), err)
		}
		*dst = kb << 10
		found++
	}
	if found != 2 {
		return Memory{}, errors.New("/proc status: no VmRSS or VmHWM line")
	}
	return m, nil
}

// Quiesce waits until the server has used no CPU for window (CPU time is
// counted in 10 ms ticks), or until limit has passed. It returns how long
// it waited. The scenarios call it between changes so that the work of one
// change is not counted in the next, and after a change that is expected to
// cause no push, to give a push the time to happen.
func (s *Server) Quiesce(window, limit time.Duration) (time.Duration, error) {
	const poll = 10 * time.Millisecond
	start := time.Now()
	last, err := s.CPU()
	if err != nil {
		return 0, err
	}
	quietSince := time.Now()
	for time.Since(start) < limit {
		time.Sleep(poll)
		now, err := s.CPU()
		if err != nil {
			return 0, err
		}
		if now != last {
			last, quietSince = now, time.Now()
			continue
		}
		if time.Since(quietSince) >= window {
			break
		}
	}
	return time.Since(start), nil
}
