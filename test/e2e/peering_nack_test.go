package e2e

import (
	"crypto/tls"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/peerd-mesh/peerd/internal/certs"
	"github.com/peerd-mesh/peerd/internal/federation"
	workloadpb "github.com/peerd-mesh/peerd/proto/istio/workload"
	federationpb "github.com/peerd-mesh/peerd/proto/peerd/federation/v1"
	"github.com/peerd-mesh/peerd/test/mesh"
	"github.com/peerd-mesh/peerd/test/ztunnel"
)

// TestPeeringInvalidResourceIsNACKedAndThePreviousStateKept: cluster1's
// link to cluster2 reaches a stand-in peer holding cluster2's identity. It
// serves greeter, then a version with an invalid port: cluster1 NACKs it
// naming the resource and field, and keeps serving the previous version;
// the next valid version is applied.
func TestPeeringInvalidResourceIsNACKedAndThePreviousStateKept(t *testing.T) {
	m := startLinkedMesh(t, nil)
	c1, c2 := m.Cluster("cluster1"), m.Cluster("cluster2")
	z := clientOn(t, c1, "node-a")
	greeter := globalKey("hello", "greeter")
	waitCapacity(t, z, greeter, "cluster2", 1, workloadpb.WorkloadStatus_HEALTHY) // the real cluster2

	fake := startFakePeer(t, filepath.Join(m.PKI, "cluster2"), c2.TrustDomain, fakeGreeter(3, 80))
	if err := c1.Link(c2, mesh.LinkOptions{Port: fake.port}); err != nil {
		t.Fatal(err)
	}
	waitCapacity(t, z, greeter, "cluster2", 3, workloadpb.WorkloadStatus_HEALTHY)

	reply := fake.push(t, fakeGreeter(7, 0)) // port 0: invalid
	if reply.GetErrorDetail() == nil {
		t.Fatalf("an invalid FederatedService was ACKed: %v", reply)
	}
	if msg := reply.GetErrorDetail().GetMessage(); !strings.Contains(msg, "hello/greeter") || !strings.Contains(msg, "port") {
		t.Errorf("NACK %q does not name the resource and the field", msg)
	}

	// The next valid version is applied; the NACKed one never was.
	sawNACKed := false
	if r := fake.push(t, fakeGreeter(5, 80)); r.GetErrorDetail() != nil {
		t.Fatalf("a valid FederatedService was NACKed: %s", r.GetErrorDetail().GetMessage())
	}
	waitStateFor(t, z, peeringWait, "greeter capacity 5 from the stand-in", func(s *ztunnel.State) bool {
		w := splitHorizon(s, greeter, "cluster2")
		if w != nil && proto3Capacity(w) == 7 {
			sawNACKed = true
		}
		return w != nil && proto3Capacity(w) == 5
	}, func() string { return "" })
	if sawNACKed {
		t.Fatal("cluster1 served the NACKed version (capacity 7)")
	}
}

// fakeGreeter is cluster2's greeter as its peerd would export it.
func fakeGreeter(capacity, port uint32) *federationpb.FederatedService {
	return &federationpb.FederatedService{
		Name:            "greeter",
		Namespace:       "hello",
		Ports:           []*federationpb.Port{{Port: port, Protocol: "TCP", Name: "http"}},
		SubjectAltNames: []string{"spiffe://cluster2.local/ns/hello/sa/greeter"},
		Capacity:        capacity,
		Scope:           federationpb.Scope_GLOBAL,
		CreationTime:    timestamppb.New(time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)),
	}
}

// fakePeer is a stand-in peerd: it serves FederatedService resources over
// delta xDS with a peerd identity from a cluster's intermediate, and hands
// the test every ACK and NACK.
type fakePeer struct {
	discovery.UnimplementedAggregatedDiscoveryServiceServer
	port int

	mu      sync.Mutex // guards below; held while sending
	stream  discovery.AggregatedDiscoveryService_DeltaAggregatedResourcesServer
	current *federationpb.FederatedService
	nonce   int
	replies chan *discovery.DeltaDiscoveryRequest
}

func startFakePeer(t *testing.T, caDir, trustDomain string, initial *federationpb.FederatedService) *fakePeer {
	t.Helper()
	ca, err := certs.LoadCA(caDir)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.IdentityCertificate(certs.Identity{TrustDomain: trustDomain, Namespace: mesh.SystemNamespace, ServiceAccount: mesh.ServiceAccount}, []string{"127.0.0.1"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakePeer{port: ln.Addr().(*net.TCPAddr).Port, current: initial, replies: make(chan *discovery.DeltaDiscoveryRequest, 64)}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequestClientCert,
		MinVersion:   tls.VersionTLS12,
	})))
	discovery.RegisterAggregatedDiscoveryServiceServer(srv, f)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)
	return f
}

func (f *fakePeer) DeltaAggregatedResources(s discovery.AggregatedDiscoveryService_DeltaAggregatedResourcesServer) error {
	for {
		req, err := s.Recv()
		if err != nil {
			return err
		}
		if req.GetResponseNonce() != "" {
			f.replies <- req
			continue
		}
		// A subscription (new stream, or another type): answer it whole.
		f.mu.Lock()
		var res *federationpb.FederatedService
		if req.GetTypeUrl() == federationTypeURL {
			f.stream, res = s, f.current
		}
		_, err = f.sendLocked(s, req.GetTypeUrl(), res)
		f.mu.Unlock()
		if err != nil {
			return err
		}
	}
}

func (f *fakePeer) sendLocked(s discovery.AggregatedDiscoveryService_DeltaAggregatedResourcesServer, typeURL string, fs *federationpb.FederatedService) (string, error) {
	f.nonce++
	resp := &discovery.DeltaDiscoveryResponse{TypeUrl: typeURL, Nonce: fmt.Sprint(f.nonce), SystemVersionInfo: fmt.Sprint(f.nonce)}
	if fs != nil {
		body, err := anypb.New(fs)
		if err != nil {
			return "", err
		}
		resp.Resources = []*discovery.Resource{{Name: fs.GetNamespace() + "/" + fs.GetName(), Version: fmt.Sprint(f.nonce), Resource: body}}
	}
	return resp.Nonce, s.Send(resp)
}

// push sends a new version of the resource on the current stream and
// returns the link's reply to it.
func (f *fakePeer) push(t *testing.T, fs *federationpb.FederatedService) *discovery.DeltaDiscoveryRequest {
	t.Helper()
	f.mu.Lock()
	if f.stream == nil {
		f.mu.Unlock()
		t.Fatal("no link is subscribed to the stand-in peer")
	}
	nonce, err := f.sendLocked(f.stream, federationTypeURL, fs)
	if federation.Validate(federation.ResourceName(fs.GetNamespace(), fs.GetName()), fs) == nil {
		f.current = fs // what a reconnecting link gets: the last valid version
	}
	f.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	timeout := time.After(peeringWait)
	for {
		select {
		case r := <-f.replies:
			if r.GetResponseNonce() == nonce {
				return r
			}
		case <-timeout:
			t.Fatalf("no ACK or NACK for nonce %s", nonce)
		}
	}
}
