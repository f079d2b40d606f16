package xds

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/status"
)

// fuzzPool is every resource the cache may hold during a fuzz run; the
// input picks which of them are live before each request.
var fuzzPool = []Resource{
	workload("c//Pod/default/a", "10.0.0.1"),
	workload("c//Pod/default/b", "10.0.0.2"),
	workload("c//Pod/default/c", "10.0.0.3"),
	service("default", "echo.default.svc.cluster.local", "10.96.0.1"),
	service("other", "db.other.svc.cluster.local", "10.96.0.2"),
}

// fuzzNames are the names a fuzzed request picks from before falling back
// to bytes of the input: resource names, alias keys, the wildcard.
var fuzzNames = []string{
	"*", "c//Pod/default/a", "c//Pod/default/b", "/10.0.0.3", "default/echo.default.svc.cluster.local",
	"/10.96.0.2", "/10.9.9.9", "missing",
}

var fuzzTypes = []string{AddressTypeURL, AuthorizationTypeURL, "type.googleapis.com/unknown.Type", ""}

// fuzzInput hands out the fuzz input's bytes as choices; once they run out
// every choice is zero.
type fuzzInput struct{ b []byte }

func (in *fuzzInput) next() byte {
	if len(in.b) == 0 {
		return 0
	}
	v := in.b[0]
	in.b = in.b[1:]
	return v
}

func (in *fuzzInput) empty() bool { return len(in.b) == 0 }

// str is a short arbitrary string taken from the input.
func (in *fuzzInput) str() string {
	n := int(in.next() % 16)
	if n > len(in.b) {
		n = len(in.b)
	}
	s := string(in.b[:n])
	in.b = in.b[n:]
	return s
}

func (in *fuzzInput) name() string {
	v := in.next()
	if int(v)%(len(fuzzNames)+1) == len(fuzzNames) {
		return in.str()
	}
	return fuzzNames[int(v)%(len(fuzzNames)+1)]
}

func (in *fuzzInput) names() []string {
	var out []string
	for n := in.next() % 4; n > 0; n-- {
		out = append(out, in.name())
	}
	return out
}

// request builds one request; lastNonce is the newest nonce received.
func (in *fuzzInput) request(lastNonce string) *discovery.DeltaDiscoveryRequest {
	req := &discovery.DeltaDiscoveryRequest{}
	if t := in.next(); int(t)%(len(fuzzTypes)+1) == len(fuzzTypes) {
		req.TypeUrl = in.str()
	} else {
		req.TypeUrl = fuzzTypes[int(t)%(len(fuzzTypes)+1)]
	}
	flags := in.next()
	req.ResourceNamesSubscribe = in.names()
	if flags&1 != 0 {
		req.ResourceNamesUnsubscribe = in.names()
	}
	if flags&2 != 0 {
		req.InitialResourceVersions = map[string]string{}
		for _, n := range in.names() {
			req.InitialResourceVersions[n] = in.str()
		}
	}
	switch flags >> 2 & 3 {
	case 1:
		req.ResponseNonce = lastNonce
	case 2:
		req.ResponseNonce = in.str()
	}
	if flags&16 != 0 && req.ResponseNonce != "" {
		req.ErrorDetail = &rpcstatus.Status{Code: 3, Message: in.name() + ": rejected"}
	}
	return req
}

// FuzzStreamRequests sends one stream a sequence of requests derived from
// the input, changing the cache between them. Invariants: no panic; the
// stream either stays usable (a probe subscription is answered) or ends
// with a gRPC status; responses carry only resources that were in the
// cache; every initial request for a served type is answered; metric labels
// take no value from the client.
//
// Long run: go test -run '^$' -fuzz FuzzStreamRequests -fuzztime 10m ./internal/xds/
func FuzzStreamRequests(f *testing.F) {
	f.Add([]byte{0x1f, 0, 0, 0, 0})                   // legacy wildcard subscription to the full cache
	f.Add([]byte{0x1f, 0, 0, 0, 1, 1, 3, 0x03, 0, 4}) // on-demand by name and alias, then a change
	f.Add([]byte{0, 0, 2, 0, 0})                      // a type URL the server does not serve
	f.Add([]byte{1, 0, 1, 1, 0, 4, 0, 1, 2, 3, 8, 5}) // on-demand then ACK and changes
	f.Add([]byte{0, 0, 2, 3, 1, 1, 5, 'v', '1', 9, 0, 8, 0})
	f.Add([]byte{0, 2, 0, 0, 2, 1, 0, 0, 2, 2, 0, 0, 2, 3, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		in := &fuzzInput{b: data}
		e := newEnv(t)
		live := func(mask byte) []Resource {
			var rs []Resource
			for i, r := range fuzzPool {
				if mask&(1<<i) != 0 {
					rs = append(rs, r)
				}
			}
			return rs
		}
		e.addrs.Replace(live(in.next()))
		var handled atomic.Int64
		e.srv.onRequest = func(*discovery.DeltaDiscoveryRequest) { handled.Add(1) }

		r := e.raw()
		var (
			mu        sync.Mutex
			got       []*discovery.DeltaDiscoveryResponse
			lastNonce string
		)
		arrived := make(chan struct{}, 1)
		done := make(chan struct{})
		go func() {
			defer close(done)
			for m := range r.resp {
				mu.Lock()
				got = append(got, m)
				lastNonce = m.GetNonce()
				mu.Unlock()
				select {
				case arrived <- struct{}{}:
				default:
				}
			}
		}()
		ended := func() bool {
			select {
			case <-done:
				return true
			default:
				return false
			}
		}

		sent := 0
		initial := map[string]bool{} // served types requested, by type URL
		const maxRequests = 64
		for !in.empty() && sent < maxRequests && !ended() {
			op := in.next()
			if op%4 == 3 {
				e.addrs.Replace(live(in.next()))
				continue
			}
			mu.Lock()
			req := in.request(lastNonce)
			mu.Unlock()
			if err := r.stream.Send(req); err != nil {
				break // the server ended the stream; its status is checked below
			}
			sent++
			if _, served := e.srv.caches[req.GetTypeUrl()]; served {
				initial[req.GetTypeUrl()] = true
			}
		}

		// Wait until the server handled every request or ended the stream.
		deadline := time.Now().Add(waitTimeout)
		for handled.Load() < int64(sent) && !ended() {
			if time.Now().After(deadline) {
				t.Fatalf("server handled %d of %d requests and did not end the stream", handled.Load(), sent)
			}
			time.Sleep(time.Millisecond)
		}

		// A usable stream answers a subscription to a name never used.
		const probe = "probe-never-a-resource"
		probed := false
		if !ended() {
			if err := r.stream.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: AddressTypeURL, ResourceNamesSubscribe: []string{probe}}); err == nil {
				probed = true
				initial[AddressTypeURL] = true
			}
		}
		answered := func() (missing []string, probeSeen bool) {
			mu.Lock()
			defer mu.Unlock()
			seen := map[string]bool{}
			for _, m := range got {
				seen[m.GetTypeUrl()] = true
				if m.GetTypeUrl() == AddressTypeURL {
					for _, n := range m.GetRemovedResources() {
						probeSeen = probeSeen || n == probe
					}
				}
			}
			for typeURL := range initial {
				if !seen[typeURL] {
					missing = append(missing, typeURL)
				}
			}
			return missing, probeSeen
		}
		for {
			missing, probeSeen := answered()
			if len(missing) == 0 && (probeSeen || !probed) {
				break
			}
			if ended() {
				break // checked below: the stream must carry a status
			}
			select {
			case <-arrived:
			case <-done:
			case <-time.After(waitTimeout):
				t.Fatalf("stream neither ended nor answered: types unanswered %v, probe answered %v", missing, probeSeen)
			}
		}
		if ended() {
			if _, ok := status.FromError(r.err); !ok || status.Code(r.err) == 0 {
				t.Fatalf("stream ended without a gRPC status: %v", r.err)
			}
		}

		// Metric labels never take a value the client chose.
		families, err := e.reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		types := map[string]bool{shortType(AddressTypeURL): true, shortType(AuthorizationTypeURL): true, "unknown": true}
		for _, mf := range families {
			for _, m := range mf.GetMetric() {
				for _, l := range m.GetLabel() {
					if l.GetName() == "type" && !types[l.GetValue()] {
						t.Fatalf("metric %s has type label %q from a client", mf.GetName(), l.GetValue())
					}
				}
			}
		}

		pool := map[string]bool{}
		for _, res := range fuzzPool {
			pool[res.Name] = true
		}
		mu.Lock()
		defer mu.Unlock()
		for _, m := range got {
			for _, res := range m.GetResources() {
				if !pool[res.GetName()] || res.GetResource() == nil {
					t.Fatalf("response %s carries resource %q (body %v) that was never in the cache", m.GetNonce(), res.GetName(), res.GetResource() != nil)
				}
			}
			if m.GetNonce() == "" {
				t.Fatalf("response without a nonce: %v", fmt.Sprint(m))
			}
		}
	})
}
