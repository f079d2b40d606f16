package serve

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/klog/v2"
)

// TestRouteKlog: what client-go logs through klog, in each of the ways it
// does, arrives as structured entries in peerd's logger and nothing reaches
// stderr.
func TestRouteKlog(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	stderr := captureStderr(t)
	RouteKlog(zap.New(core))
	t.Cleanup(klog.ClearLogger)

	klog.InfoS("reflector started", "resource", "pods")
	klog.ErrorS(errors.New("connection refused"), "failed to list", "resource", "pods")
	klog.Warningf("watch of %s ended", "nodes")
	klog.FromContext(context.Background()).Info("contextual", "kind", "Service")
	utilruntime.HandleError(errors.New("unhandled"))
	klog.V(4).InfoS("chatty detail") // klog's own verbosity (0) drops it
	klog.Flush()

	tests := []struct {
		message string
		level   zapcore.Level
		field   string
	}{
		{"reflector started", zapcore.InfoLevel, "resource"},
		{"failed to list", zapcore.ErrorLevel, "error"},
		{"watch of nodes ended", zapcore.InfoLevel, ""},
		{"contextual", zapcore.InfoLevel, "kind"},
	}
	for _, tc := range tests {
		entries := logs.FilterMessage(tc.message).All()
		if len(entries) != 1 {
			t.Errorf("%q: %d entries in the zap logger, want 1 (all: %v)", tc.message, len(entries), messages(logs))
			continue
		}
		e := entries[0]
		if e.LoggerName != "klog" {
			t.Errorf("%q: logger name %q, want klog", tc.message, e.LoggerName)
		}
		if e.Level != tc.level {
			t.Errorf("%q: level %v, want %v", tc.message, e.Level, tc.level)
		}
		if tc.field != "" {
			if _, ok := e.ContextMap()[tc.field]; !ok {
				t.Errorf("%q: no structured field %q in %v", tc.message, tc.field, e.ContextMap())
			}
		}
	}
	if logs.FilterMessage("Unhandled Error").FilterFieldKey("error").Len() != 1 {
		t.Errorf("runtime.HandleError did not reach the zap logger: %v", messages(logs))
	}
	if n := logs.FilterMessage("chatty detail").Len(); n != 0 {
		t.Errorf("a V(4) message was logged %d times; klog's verbosity must still gate it", n)
	}
	if out := stderr(); out != "" {
		t.Errorf("klog wrote to stderr:\n%s", out)
	}
}

func messages(logs *observer.ObservedLogs) []string {
	var out []string
	for _, e := range logs.All() {
		out = append(out, e.Message)
	}
	return out
}

// captureStderr redirects os.Stderr (klog's default output) to a pipe until
// the returned function is called, which restores it and returns what was
// written.
func captureStderr(t *testing.T) func() string {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	orig := os.Stderr
	os.Stderr = w
	var buf bytes.Buffer
	done := make(chan struct{})
	go func() { _, _ = io.Copy(&buf, r); close(done) }()
	restored := false
	restore := func() string {
		if !restored {
			restored = true
			os.Stderr = orig
			w.Close()
			<-done
			r.Close()
		}
		return buf.String()
	}
	t.Cleanup(func() { restore() })
	return restore
}
