package ports

import (
	"net"
	"strconv"
	"testing"
)

func TestFreeIsBindableAndOutsideTheEphemeralRange(t *testing.T) {
	seen := map[string]bool{}
	for range 50 {
		addr, err := Free()
		if err != nil {
			t.Fatal(err)
		}
		if seen[addr] {
			t.Fatalf("%s handed out twice", addr)
		}
		seen[addr] = true
		_, port, _ := net.SplitHostPort(addr)
		if p, _ := strconv.Atoi(port); p < lowest || p >= ephemeralLow() {
			t.Fatalf("port %d is outside %d-%d", p, lowest, ephemeralLow()-1)
		}
		l, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatalf("%s cannot be bound: %v", addr, err)
		}
		l.Close()
	}
}
