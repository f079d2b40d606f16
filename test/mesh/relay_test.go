package mesh

import (
	"bufio"
	"net"
	"testing"
	"time"
)

// echoServer answers every line with the same line.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if _, err := c.Write([]byte(line)); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

func roundTrip(t *testing.T, c net.Conn, r *bufio.Reader, msg string, wait time.Duration) (string, error) {
	t.Helper()
	if _, err := c.Write([]byte(msg + "\n")); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(wait))
	return r.ReadString('\n')
}

func TestRelayPassesBytesBlackholesWhilePausedAndCloses(t *testing.T) {
	relay, err := NewRelay(echoServer(t))
	if err != nil {
		t.Fatal(err)
	}
	defer relay.Close()
	c, err := net.Dial("tcp", relay.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	if got, err := roundTrip(t, c, r, "one", 10*time.Second); err != nil || got != "one\n" {
		t.Fatalf("through the relay: %q, %v", got, err)
	}

	relay.Pause()
	// A blackhole answers nothing and closes nothing: the read times out
	// (a timeout is the expected outcome here, not a latency assertion).
	if got, err := roundTrip(t, c, r, "two", 200*time.Millisecond); err == nil {
		t.Fatalf("paused relay passed %q", got)
	} else if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
		t.Fatalf("paused relay: want a timeout (connection kept), got %v", err)
	}
	relay.Resume()
	// The held bytes arrive after the partition, as retransmission would.
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if got, err := r.ReadString('\n'); err != nil || got != "two\n" {
		t.Fatalf("after resume: %q, %v", got, err)
	}

	relay.Close()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := r.ReadString('\n'); err == nil {
		t.Fatal("connection still open after the relay closed")
	}
}
