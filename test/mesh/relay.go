package mesh

import (
	"errors"
	"io"
	"net"
	"sync"
)

// Relay stands in for a cluster's east-west gateway: a TLS-passthrough TCP
// relay. It copies bytes between each accepted connection and its target
// without looking at them, so the TLS handshake and the peer identity are
// end to end between the two peerds, as through a real passthrough listener.
//
// Pause makes it a blackhole: connections stay open (no FIN, no RST) but no
// byte crosses in either direction, as when a network path silently drops
// packets; new connections are accepted and held the same way. Resume lets
// the held bytes through, as TCP retransmission would after the partition.
type Relay struct {
	target string
	ln     net.Listener

	mu     sync.Mutex // guards everything below
	paused bool
	open   chan struct{} // closed while traffic flows; replaced on Pause
	closed bool
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup
}

// NewRelay listens on a free loopback port and relays every connection to
// target (host:port).
func NewRelay(target string) (*Relay, error) { return NewRelayAt("127.0.0.1:0", target) }

// NewRelayAt is NewRelay on a given address, for a gateway that must be
// reached where its Gateway's listeners say (say 127.0.0.2:15012).
func NewRelayAt(listen, target string) (*Relay, error) {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, err
	}
	r := &Relay{target: target, ln: ln, open: make(chan struct{}), conns: map[net.Conn]struct{}{}}
	close(r.open)
	r.wg.Add(1)
	go r.accept()
	return r, nil
}

// Addr is the relay's listening address (127.0.0.1:port).
func (r *Relay) Addr() string { return r.ln.Addr().String() }

// Port is the relay's listening port.
func (r *Relay) Port() int { return r.ln.Addr().(*net.TCPAddr).Port }

// Pause blackholes traffic: every open and new connection stays open and
// silent until Resume.
func (r *Relay) Pause() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.paused {
		r.paused = true
		r.open = make(chan struct{})
	}
}

// Resume lets traffic flow again, held bytes first.
func (r *Relay) Resume() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.paused {
		r.paused = false
		close(r.open)
	}
}

// Paused reports whether the relay is blackholing traffic.
func (r *Relay) Paused() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.paused
}

// Connections is the number of relayed connections open now.
func (r *Relay) Connections() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.conns) / 2
}

// Close stops accepting and closes every relayed connection (idempotent).
func (r *Relay) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	if r.paused {
		close(r.open) // wake held copies so they see the closed connections
	}
	for c := range r.conns {
		c.Close()
	}
	r.mu.Unlock()
	err := r.ln.Close()
	r.wg.Wait()
	return err
}

func (r *Relay) accept() {
	defer r.wg.Done()
	for {
		down, err := r.ln.Accept()
		if err != nil {
			return // closed
		}
		r.wg.Add(1)
		go r.relay(down)
	}
}

// track registers c so Close can end it; false when the relay is closed.
func (r *Relay) track(c net.Conn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return false
	}
	r.conns[c] = struct{}{}
	return true
}

func (r *Relay) untrack(c net.Conn) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.conns, c)
}

func (r *Relay) relay(down net.Conn) {
	defer r.wg.Done()
	defer down.Close()
	if !r.track(down) {
		return
	}
	defer r.untrack(down)
	// A gateway whose backend is gone closes the client's connection, as
	// Envoy does when the upstream connect fails.
	up, err := net.Dial("tcp", r.target)
	if err != nil {
		return
	}
	defer up.Close()
	if !r.track(up) {
		return
	}
	defer r.untrack(up)
	done := make(chan struct{}, 2)
	go func() { r.copy(up, down); done <- struct{}{} }()
	go func() { r.copy(down, up); done <- struct{}{} }()
	<-done
	// One side ended: end both, so the other copy returns too.
	down.Close()
	up.Close()
	<-done
}

// copy moves bytes from src to dst, holding each chunk while the relay is
// paused.
func (r *Relay) copy(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			r.mu.Lock()
			open := r.open
			r.mu.Unlock()
			<-open
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				return
			}
			// Half-close as TCP does, so the peer sees the end of stream.
			if tc, ok := dst.(*net.TCPConn); ok {
				_ = tc.CloseWrite()
			}
			return
		}
	}
}
