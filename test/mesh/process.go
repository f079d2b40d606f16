package mesh

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// stopTimeout bounds a graceful stop before the process group is killed.
const stopTimeout = 10 * time.Second

// process is one run of the peerd binary, in a process group of its own so
// a kill reaches anything it started.
type process struct {
	cmd    *exec.Cmd
	exited chan struct{}
	err    error // Wait's result, set before exited closes
}

func startProcess(binary string, args []string, out io.Writer) (*process, error) {
	cmd := exec.Command(binary, args...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = childAttrs()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", binary, err)
	}
	p := &process{cmd: cmd, exited: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

func (p *process) running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// stop sends SIGTERM (peerd drains and exits) and kills the process group
// if it has not exited after stopTimeout.
func (p *process) stop() {
	if !p.running() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(stopTimeout):
		p.kill()
	}
}

// kill ends the process group at once (SIGKILL): no drain, no goodbye to
// peers, as when a node dies.
func (p *process) kill() {
	if !p.running() {
		return
	}
	killGroup(p.cmd.Process.Pid)
	<-p.exited
}

// logBuffer collects a cluster's peerd output across restarts; it also
// copies it to a file when one is given.
type logBuffer struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	file io.Writer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.file != nil {
		_, _ = b.file.Write(p)
	}
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Len is the number of bytes written so far: a mark to read only what
// came after it (LogsSince).
func (b *logBuffer) Len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Len()
}

// httpGet fetches a URL with a short timeout.
func httpGet(ctx context.Context, url string) (int, string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// ParseMetric sums the samples of a Prometheus text exposition whose line
// contains every label fragment; found says whether any line matched.
func ParseMetric(body, name string, labelFragments ...string) (total float64, found bool, err error) {
lines:
	for _, line := range strings.Split(body, "\n") {
		if !strings.HasPrefix(line, name+" ") && !strings.HasPrefix(line, name+"{") {
			continue
		}
		for _, f := range labelFragments {
			if !strings.Contains(line, f) {
				continue lines
			}
		}
		var v float64
		if _, err := fmt.Sscanf(line[strings.LastIndex(line, " ")+1:], "%g", &v); err != nil {
			return 0, false, fmt.Errorf("metric line %q: %w", line, err)
		}
		total += v
		found = true
	}
	return total, found, nil
}

// copyManifests copies the regular *.yaml / *.yml files of src into dst.
func copyManifests(src, dst string) error {
	entries, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if !e.Type().IsRegular() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		data, err := os.ReadFile(src + string(os.PathSeparator) + e.Name())
		if err != nil {
			return err
		}
		if err := os.WriteFile(dst+string(os.PathSeparator)+e.Name(), data, 0o644); err != nil {
			return err
		}
	}
	return nil
}
