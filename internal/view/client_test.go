package view

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/peerd-mesh/peerd/internal/certs"
	securitypb "github.com/peerd-mesh/peerd/proto/istio/security"
	workloadpb "github.com/peerd-mesh/peerd/proto/istio/workload"
)

// fakeADS is a scripted delta-ADS server: it answers each type's initial
// request with the responses scripted for that type, in order, and records
// every request it receives.
type fakeADS struct {
	discoveryv3.UnimplementedAggregatedDiscoveryServiceServer
	script map[string][]*discoveryv3.DeltaDiscoveryResponse
	// failWith, when set, ends the stream with this error after the first
	// request.
	failWith error

	mu   sync.Mutex
	reqs []*discoveryv3.DeltaDiscoveryRequest
	done chan struct{} // closed when the (single) stream handler returns
}

func newFakeADS(script map[string][]*discoveryv3.DeltaDiscoveryResponse) *fakeADS {
	return &fakeADS{script: script, done: make(chan struct{})}
}

func (f *fakeADS) DeltaAggregatedResources(s discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesServer) error {
	defer close(f.done)
	seen := map[string]bool{}
	for {
		req, err := s.Recv()
		if err != nil {
			return nil // the client half-closed or went away
		}
		f.mu.Lock()
		f.reqs = append(f.reqs, req)
		f.mu.Unlock()
		if f.failWith != nil {
			return f.failWith
		}
		if seen[req.GetTypeUrl()] {
			continue
		}
		seen[req.GetTypeUrl()] = true
		for _, resp := range f.script[req.GetTypeUrl()] {
			if err := s.Send(resp); err != nil {
				return err
			}
		}
	}
}

// requests waits for the stream to end and returns what it received.
func (f *fakeADS) requests(t *testing.T) []*discoveryv3.DeltaDiscoveryRequest {
	t.Helper()
	select {
	case <-f.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the server's stream did not end")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*discoveryv3.DeltaDiscoveryRequest(nil), f.reqs...)
}

// serve starts srv on an in-memory listener and returns a dialer for it.
func serve(t *testing.T, srv *fakeADS, opts ...grpc.ServerOption) grpc.DialOption {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	g := grpc.NewServer(opts...)
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(g, srv)
	go g.Serve(lis)
	t.Cleanup(g.Stop)
	return grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) })
}

func fetch(t *testing.T, dialer grpc.DialOption, d DialOptions, o FetchOptions) (Snapshot, error) {
	t.Helper()
	cc, err := Dial("passthrough:///peerd", d, dialer)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return Fetch(ctx, cc, o)
}

func resource(name string, m proto.Message) *discoveryv3.Resource {
	a, err := anypb.New(m)
	if err != nil {
		panic(err)
	}
	return &discoveryv3.Resource{Name: name, Version: "v-" + name, Resource: a}
}

func addressResource(a *workloadpb.Address) *discoveryv3.Resource {
	if s := a.GetService(); s != nil {
		return resource(serviceKey(s), a)
	}
	return resource(a.GetWorkload().GetUid(), a)
}

func response(typeURL, nonce string, removed []string, rs ...*discoveryv3.Resource) *discoveryv3.DeltaDiscoveryResponse {
	return &discoveryv3.DeltaDiscoveryResponse{TypeUrl: typeURL, Nonce: nonce, Resources: rs, RemovedResources: removed}
}

func TestFetchSnapshot(t *testing.T) {
	fx := fixture()
	var full []*discoveryv3.Resource
	for _, a := range fx.Addresses {
		full = append(full, addressResource(a))
	}
	echo2 := wl("apps", "echo-2", func(w *workloadpb.Workload) {
		w.Addresses = [][]byte{ipb("10.244.1.8")}
		w.Network = "net1"
		w.Node = "node-b" // now Ready
	}, endpointOf(echoKey))
	srv := newFakeADS(map[string][]*discoveryv3.DeltaDiscoveryResponse{
		AddressTypeURL: {
			response(AddressTypeURL, "a1", nil, full...),
			// An incremental push that arrives before the other type has
			// synced is applied: updates, then removals.
			response(AddressTypeURL, "a2", []string{"c1//Pod/kube-system/broken", "never-held"}, addressResource(echo2)),
		},
		AuthorizationTypeURL: {
			response(AuthorizationTypeURL, "p1", nil,
				resource("apps/deny-all", fx.Authorizations[0]), resource("global", fx.Authorizations[1])),
		},
	})
	got, err := fetch(t, serve(t, srv), DialOptions{}, FetchOptions{})
	if err != nil {
		t.Fatal(err)
	}

	want := fixture()
	var addrs []*workloadpb.Address
	for _, a := range want.Addresses {
		switch a.GetWorkload().GetUid() {
		case "c1//Pod/kube-system/broken":
			continue
		case "c1//Pod/apps/echo-2":
			a = echo2
		}
		addrs = append(addrs, a)
	}
	want.Addresses = sortedAddresses(addrs)
	want.Authorizations = sortedPolicies(want.Authorizations)
	if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
		t.Errorf("snapshot mismatch (-want +got):\n%s", diff)
	}

	// What the server saw: a wildcard initial request per type carrying the
	// node, then one ACK per response, in order, and nothing else.
	type seen struct {
		Type, Nonce string
		Node        bool
		Subscribe   []string
		NACK        bool
	}
	var reqs []seen
	for _, r := range srv.requests(t) {
		reqs = append(reqs, seen{r.GetTypeUrl(), r.GetResponseNonce(), r.GetNode().GetId() != "", r.GetResourceNamesSubscribe(), r.GetErrorDetail() != nil})
	}
	wantReqs := []seen{
		{Type: AddressTypeURL, Node: true},
		{Type: AuthorizationTypeURL, Node: true},
		{Type: AddressTypeURL, Nonce: "a1"},
		{Type: AddressTypeURL, Nonce: "a2"},
		{Type: AuthorizationTypeURL, Nonce: "p1"},
	}
	if diff := cmp.Diff(wantReqs, reqs); diff != "" {
		t.Errorf("requests mismatch (-want +got):\n%s", diff)
	}
}

// TestFetchEmptyTypes: a server with nothing to say still answers each
// initial request (as ztunnel requires), and Fetch returns an empty view.
func TestFetchEmptyTypes(t *testing.T) {
	srv := newFakeADS(map[string][]*discoveryv3.DeltaDiscoveryResponse{
		AddressTypeURL:       {response(AddressTypeURL, "a1", nil)},
		AuthorizationTypeURL: {response(AuthorizationTypeURL, "p1", nil)},
	})
	got, err := fetch(t, serve(t, srv), DialOptions{}, FetchOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Addresses)+len(got.Authorizations) != 0 {
		t.Errorf("got %v, want an empty snapshot", got)
	}
}

func TestFetchOnlyAddresses(t *testing.T) {
	srv := newFakeADS(map[string][]*discoveryv3.DeltaDiscoveryResponse{
		AddressTypeURL: {response(AddressTypeURL, "a1", nil, addressResource(fixture().Addresses[0]))},
	})
	got, err := fetch(t, serve(t, srv), DialOptions{}, FetchOptions{TypeURLs: []string{AddressTypeURL}})
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Addresses) != 1 {
		t.Errorf("got %d addresses, want 1", len(got.Addresses))
	}
	for _, r := range srv.requests(t) {
		if r.GetTypeUrl() != AddressTypeURL {
			t.Errorf("subscribed to %s, which was not asked for", r.GetTypeUrl())
		}
	}
}

// TestFetchLargeResponse: a whole-mesh response above grpc-go's default
// 4 MiB limit arrives through Dial, and would not through a default client.
func TestFetchLargeResponse(t *testing.T) {
	const n = 600 // few, large resources: the size matters, not the count
	pad := strings.Repeat("x", 8000)
	var rs []*discoveryv3.Resource
	size := 0
	for i := range n {
		a := wl("bulk", fmt.Sprintf("w-%03d-%s", i, pad), func(w *workloadpb.Workload) {
			w.Addresses = [][]byte{{10, byte(i >> 16), byte(i >> 8), byte(i)}}
		})
		r := addressResource(a)
		size += proto.Size(r)
		rs = append(rs, r)
	}
	if size <= 4<<20 {
		t.Fatalf("test response is only %d bytes, not above the 4 MiB default", size)
	}
	script := map[string][]*discoveryv3.DeltaDiscoveryResponse{AddressTypeURL: {response(AddressTypeURL, "big", nil, rs...)}}

	got, err := fetch(t, serve(t, newFakeADS(script)), DialOptions{}, FetchOptions{TypeURLs: []string{AddressTypeURL}})
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Addresses) != n {
		t.Fatalf("got %d addresses, want %d", len(got.Addresses), n)
	}

	// The same response through a client with grpc-go's defaults fails:
	// this is what the raised limit is for.
	dialer := serve(t, newFakeADS(script))
	cc, err := grpc.NewClient("passthrough:///peerd", grpc.WithTransportCredentials(insecure.NewCredentials()), dialer)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := Fetch(ctx, cc, FetchOptions{TypeURLs: []string{AddressTypeURL}}); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("default client: err = %v, want ResourceExhausted", err)
	}
}

func TestFetchNACKsUndecodableResources(t *testing.T) {
	good := addressResource(fixture().Addresses[0])
	garbage := &discoveryv3.Resource{Name: "bad-bytes", Resource: &anypb.Any{TypeUrl: AddressTypeURL, Value: []byte{0xff, 0xff}}}
	wrongType := resource("wrong-type", &securitypb.Authorization{Name: "x"})
	empty := resource("empty", &workloadpb.Address{})
	srv := newFakeADS(map[string][]*discoveryv3.DeltaDiscoveryResponse{
		AddressTypeURL: {response(AddressTypeURL, "a1", nil, good, garbage, wrongType, empty)},
	})
	_, err := fetch(t, serve(t, srv), DialOptions{}, FetchOptions{TypeURLs: []string{AddressTypeURL}})
	if err == nil {
		t.Fatal("Fetch accepted undecodable resources")
	}
	for _, name := range []string{"bad-bytes: ", "wrong-type: body type", "empty: address is neither"} {
		if !strings.Contains(err.Error(), name) {
			t.Errorf("err = %v\nwant it to contain %q", err, name)
		}
	}
	reqs := srv.requests(t)
	last := reqs[len(reqs)-1]
	if last.GetResponseNonce() != "a1" || last.GetErrorDetail() == nil {
		t.Fatalf("last request = %v, want a NACK of nonce a1", last)
	}
	if msg := last.GetErrorDetail().GetMessage(); !strings.Contains(msg, "bad-bytes: ") || !strings.Contains(msg, "; wrong-type: ") ||
		strings.Contains(msg, good.GetName()) {
		t.Errorf("NACK detail = %q, want '<name>: <error>' for each bad resource only, joined by '; '", msg)
	}
}

func TestFetchReportsStreamErrors(t *testing.T) {
	srv := newFakeADS(nil)
	srv.failWith = status.Error(codes.PermissionDenied, "no token")
	_, err := fetch(t, serve(t, srv), DialOptions{}, FetchOptions{})
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "waiting for first response for "+AddressTypeURL) {
		t.Fatalf("err = %v, want PermissionDenied naming the pending types", err)
	}

	// A response of a type nobody asked for is a server bug worth naming.
	srv = newFakeADS(map[string][]*discoveryv3.DeltaDiscoveryResponse{
		AddressTypeURL: {response("type.googleapis.com/other", "o1", nil)},
	})
	_, err = fetch(t, serve(t, srv), DialOptions{}, FetchOptions{TypeURLs: []string{AddressTypeURL}})
	if err == nil || !strings.Contains(err.Error(), `type "type.googleapis.com/other" was not subscribed`) {
		t.Fatalf("err = %v, want the unsubscribed type named", err)
	}

	if _, err := Fetch(context.Background(), nil, FetchOptions{TypeURLs: []string{"bogus"}}); err == nil || !strings.Contains(err.Error(), `"bogus"`) {
		t.Fatalf("unknown type: err = %v", err)
	}
}

func TestFetchOverTLS(t *testing.T) {
	mesh, other := t.TempDir(), t.TempDir()
	for _, d := range []string{mesh, other} {
		if _, err := certs.GenerateMesh(d, []string{"c1"}, certs.MeshOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	ca, err := certs.LoadCA(filepath.Join(mesh, "c1"))
	if err != nil {
		t.Fatal(err)
	}
	tlsCfg, err := ca.ServerTLSConfig([]string{"peerd.istio-system.svc"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	script := map[string][]*discoveryv3.DeltaDiscoveryResponse{
		AddressTypeURL: {response(AddressTypeURL, "a1", nil, addressResource(fixture().Addresses[0]))},
	}
	dialer := serve(t, newFakeADS(script), grpc.Creds(credentials.NewTLS(tlsCfg)))
	got, err := fetch(t, dialer, DialOptions{TLS: true, RootCert: filepath.Join(mesh, certs.RootCertFile), ServerName: "peerd.istio-system.svc"},
		FetchOptions{TypeURLs: []string{AddressTypeURL}})
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Addresses) != 1 {
		t.Fatalf("got %d addresses over TLS, want 1", len(got.Addresses))
	}

	_, err = fetch(t, dialer, DialOptions{TLS: true, RootCert: filepath.Join(other, certs.RootCertFile), ServerName: "peerd.istio-system.svc"},
		FetchOptions{TypeURLs: []string{AddressTypeURL}})
	if err == nil || !strings.Contains(err.Error(), "certificate signed by unknown authority") {
		t.Fatalf("another mesh's root: err = %v, want an unknown-authority failure", err)
	}

	if _, err := Dial("x:1", DialOptions{TLS: true}); err == nil {
		t.Error("TLS without a root certificate: want an error")
	}
}
