// Package ports hands out loopback ports for the processes tests start
// (peerd, etcd, kube-apiserver) to bind.
//
// A port found by listening on port 0 comes from the kernel's ephemeral
// range, the same range outgoing connections take their local ports from:
// between the probe closing it and the child binding it, any of the tests'
// many client connections may take it, and the child fails with "address
// already in use". Ports below the ephemeral range are never given to
// outgoing connections, so here only another caller of Free could take one,
// and each process walks that range from its own random point.
package ports

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
)

// lowest is the first port handed out: above the well-known and the
// commonly configured service ports.
const lowest = 10000

var (
	mu   sync.Mutex
	next int
	top  int
)

// Free returns "127.0.0.1:<port>" for a port that nothing listened on a
// moment ago and that outgoing connections will not take.
func Free() (string, error) {
	mu.Lock()
	defer mu.Unlock()
	if top == 0 {
		top = ephemeralLow()
		next = lowest + rand.IntN(top-lowest)
	}
	for range top - lowest {
		p := next
		next++
		if next >= top {
			next = lowest
		}
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			continue
		}
		addr := l.Addr().String()
		l.Close()
		return addr, nil
	}
	return "", fmt.Errorf("ports: no free port in %d-%d", lowest, top-1)
}

// ephemeralLow is the first port of the kernel's ephemeral range (Linux's
// default when it cannot be read).
func ephemeralLow() int {
	low := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil && n > lowest+1000 {
				low = n
			}
		}
	}
	return low
}
