package e2e

import (
	"bytes"
	"context"
	"fmt"
	"github.com/peerd-mesh/peerd/test/mesh"
	"github.com/peerd-mesh/peerd/test/ports"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// peerdBinary is built once by TestMain.
var peerdBinary string

func TestMain(m *testing.M) { mesh.MainWithPeerd(m, &peerdBinary) }

// repoPath returns a path relative to the repository root.
func repoPath(parts ...string) string {
	return filepath.Join(append([]string{"..", ".."}, parts...)...)
}

// freePort reserves a loopback port for a child process. The port is
// released before the child binds it; collisions are unlikely on loopback and
// surface as a clear start-up failure, not a wrong result.
func freePort(t *testing.T) string {
	t.Helper()
	addr, err := ports.Free()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

// peerdProcess is a running peerd binary.
type peerdProcess struct {
	cmd            *exec.Cmd
	PlaintextAddr  string
	MonitoringAddr string
	logs           *syncBuffer
	exited         chan struct{}
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// peerdOptions describe one peerd start.
type peerdOptions struct {
	// Args are passed after `serve`. Listener flags are added unless the
	// args set them.
	Args []string
	// PlaintextAddr reuses a given address (to restart on the same port).
	PlaintextAddr string
	// MonitoringListen replaces the loopback monitoring address (for
	// example to listen on every interface); MonitoringAddr is then where
	// the test reaches it.
	MonitoringListen, MonitoringAddr string
	// NoWait returns without waiting for /readyz.
	NoWait bool
	// Env is added to the test's environment (e.g. POD_NAME=..., as the
	// downward API sets it in a pod).
	Env []string
}

// startPeerd starts `peerd serve` and waits until /readyz says ready. The
// process is stopped when the test ends; its log is printed if the test failed.
func startPeerd(t *testing.T, o peerdOptions) *peerdProcess {
	t.Helper()
	p := &peerdProcess{
		PlaintextAddr:  o.PlaintextAddr,
		MonitoringAddr: freePort(t),
		logs:           &syncBuffer{},
		exited:         make(chan struct{}),
	}
	if p.PlaintextAddr == "" {
		p.PlaintextAddr = freePort(t)
	}
	monitoringListen := p.MonitoringAddr
	if o.MonitoringListen != "" {
		monitoringListen, p.MonitoringAddr = o.MonitoringListen, o.MonitoringAddr
	}
	args := append([]string{"serve"}, o.Args...)
	if !hasFlag(o.Args, "--listen") {
		args = append(args, "--listen=")
	}
	args = append(args, "--plaintext-listen", p.PlaintextAddr, "--monitoring-listen", monitoringListen)
	p.cmd = exec.Command(peerdBinary, args...)
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	if len(o.Env) > 0 {
		p.cmd.Env = append(os.Environ(), o.Env...)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		p.Stop()
		if t.Failed() {
			t.Logf("peerd %v log:\n%s", args, p.Logs())
		}
	})
	if !o.NoWait {
		p.waitReady(t)
	}
	return p
}

func hasFlag(args []string, flag string) bool {
	for _, a := range args {
		if a == flag || strings.HasPrefix(a, flag+"=") {
			return true
		}
	}
	return false
}

// Stop ends the process (idempotent).
func (p *peerdProcess) Stop() { p.stopWith(os.Interrupt) }

// Terminate ends the process as the kubelet ends a pod: SIGTERM.
func (p *peerdProcess) Terminate() { p.stopWith(syscall.SIGTERM) }

// stopWith sends sig and waits for the process to exit, killing it after
// 10s.
func (p *peerdProcess) stopWith(sig os.Signal) {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

func (p *peerdProcess) Logs() string { return p.logs.String() }

// waitReady polls /readyz until it answers 200; it fails if the process exits.
func (p *peerdProcess) waitReady(t *testing.T) {
	t.Helper()
	deadline := time.After(60 * time.Second)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		code, _ := p.get("/readyz")
		if code == http.StatusOK {
			return
		}
		select {
		case <-p.exited:
			t.Fatalf("peerd exited before it was ready:\n%s", p.Logs())
		case <-deadline:
			t.Fatalf("peerd not ready after 60s:\n%s", p.Logs())
		case <-tick.C:
		}
	}
}

// get fetches a monitoring path.
func (p *peerdProcess) get(path string) (int, string) {
	return p.getAt(p.MonitoringAddr, path)
}

// getAt fetches a monitoring path through another address of the listener.
func (p *peerdProcess) getAt(addr, path string) (int, string) {
	resp, err := http.Get("http://" + addr + path)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// waitExit waits for the process to exit on its own and returns its log.
func (p *peerdProcess) waitExit(t *testing.T) string {
	t.Helper()
	select {
	case <-p.exited:
	case <-time.After(30 * time.Second):
		t.Fatalf("peerd did not exit:\n%s", p.Logs())
	}
	return p.Logs()
}

// copyDir copies a manifest directory into a fresh temp dir the test may edit.
func copyDir(t *testing.T, src string) string {
	t.Helper()
	dst := t.TempDir()
	entries, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		data, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

// metric returns the sum of a metric's samples whose line contains every
// given label fragment, from /metrics, and whether any sample matched.
func (p *peerdProcess) metric(t *testing.T, name string, labelFragments ...string) (float64, bool) {
	t.Helper()
	_, body := p.get("/metrics")
	total, found, err := mesh.ParseMetric(body, name, labelFragments...)
	if err != nil {
		t.Fatal(err)
	}
	return total, found
}

// waitMetric waits until the metric's value is want. The server updates
// its metrics after the client's message arrives, so a value the client
// caused is awaited, never read once.
func (p *peerdProcess) waitMetric(t *testing.T, want float64, name string, labelFragments ...string) {
	t.Helper()
	waitFor(t, fmt.Sprintf("metric %s%v = %v", name, labelFragments, want), func() bool {
		v, ok := p.metric(t, name, labelFragments...)
		return ok && v == want
	})
}

func withTimeout(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
