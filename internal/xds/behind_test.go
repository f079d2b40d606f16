package xds

import (
	"fmt"
	"sync/atomic"
	"testing"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"

	"github.com/peerd-mesh/peerd/test/ztunnel"
)

// A wildcard stream stuck in Send while the cache churns past its tombstone
// cap cannot be told which names went away: the server closes it, and the
// client's reconnect with initial_resource_versions yields exact removals.
func TestWildcardStreamBehindTheLogResynchronises(t *testing.T) {
	e := newEnv(t)
	stable := workload("c//Pod/default/stable", "10.0.0.1")
	e.addrs.Replace([]Resource{stable})

	// The hook is installed before any stream exists; it blocks the stream
	// goroutine in its next Address send while hold is set.
	var hold atomic.Bool
	release := make(chan struct{})
	blocked := make(chan struct{}, 1)
	e.srv.onSend = func(resp *discovery.DeltaDiscoveryResponse, _ []byte) {
		if resp.GetTypeUrl() == AddressTypeURL && hold.CompareAndSwap(true, false) {
			blocked <- struct{}{}
			<-release
		}
	}
	c := e.client(ztunnel.Config{})
	e.wait(c, "initial sync", func(s *ztunnel.State) bool { return s.Ready && len(s.Workloads) == 1 })

	hold.Store(true)
	e.addrs.Replace([]Resource{stable, workload("c//Pod/default/tmp-0", "10.1.0.1")})
	<-blocked
	// Churn far past the tombstone cap while the stream is stuck.
	const rounds = 3000
	for i := 1; i < rounds; i++ {
		e.addrs.Replace([]Resource{stable, workload(fmt.Sprintf("c//Pod/default/tmp-%d", i), "10.1.0.1")})
	}
	close(release)

	last := fmt.Sprintf("c//Pod/default/tmp-%d", rounds-1)
	e.wait(c, "resync after the server closed the stream", func(s *ztunnel.State) bool {
		return s.Streams >= 2 && s.Ready && len(s.Workloads) == 2 &&
			s.Workloads[stable.Name] != nil && s.Workloads[last] != nil
	})
	if n := e.logs.FilterMessageSnippet("fell behind").Len(); n == 0 {
		t.Error("the server did not log why it closed the stream")
	}
}
