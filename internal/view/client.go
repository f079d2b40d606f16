package view

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	"github.com/peerd-mesh/peerd/internal/certs"
	securitypb "github.com/peerd-mesh/peerd/proto/istio/security"
	workloadpb "github.com/peerd-mesh/peerd/proto/istio/workload"
)

// Type URLs ztunnel subscribes to. (Spelled out here rather than imported
// from internal/xds: this package sees peerd only over the wire.)
const (
	AddressTypeURL       = "type.googleapis.com/istio.workload.Address"
	AuthorizationTypeURL = "type.googleapis.com/istio.security.Authorization"
)

// MaxRecvMsgSize is ztunnel's own receive limit. A whole-mesh initial
// response is far above grpc-go's 4 MiB default.
const MaxRecvMsgSize = 200 << 20

// ackGrace bounds how long Fetch waits, after its last ACK and half-close,
// for the server to end the stream. Waiting lets the ACK reach the server
// (cancelling at once could reset the stream first); the bound keeps a
// server that never ends streams from hanging the CLI.
const ackGrace = 2 * time.Second

// DialOptions choose the transport to peerd.
type DialOptions struct {
	// TLS verifies the server against RootCert only.
	TLS        bool
	RootCert   string
	ServerName string
}

// Dial connects lazily to addr (HOST:PORT) with the receive limit raised
// to MaxRecvMsgSize. extra options come last, so tests can add a dialer.
func Dial(addr string, o DialOptions, extra ...grpc.DialOption) (*grpc.ClientConn, error) {
	creds := insecure.NewCredentials()
	if o.TLS {
		if o.RootCert == "" {
			return nil, errors.New("view: TLS needs a root certificate file")
		}
		cfg, err := certs.ClientTLSConfig(o.RootCert, o.ServerName)
		if err != nil {
			return nil, err
		}
		creds = credentials.NewTLS(cfg)
	}
	opts := append([]grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxRecvMsgSize)),
	}, extra...)
	cc, err := grpc.NewClient(addr, opts...)
	if err != nil {
		return nil, fmt.Errorf("view: dial %s: %w", addr, err)
	}
	return cc, nil
}

// FetchOptions tune Fetch. The zero value fetches both types.
type FetchOptions struct {
	// TypeURLs to subscribe to; default Address and Authorization.
	TypeURLs []string
	// Node sent in each initial request; default a node named "peerd-view".
	Node *corev3.Node
}

// Fetch opens one delta-ADS stream, subscribes as a wildcard client to each
// type, and returns once every type has had its first response (the full
// state, since a wildcard client holds nothing yet). Every response is ACKed;
// a response with a resource that does not decode is NACKed (error_detail
// lists "<name>: <error>" as ztunnel does) and Fetch fails. Responses that
// arrive for a type already synced, before the others are, are applied too,
// so the snapshot is never older than the last response read.
func Fetch(ctx context.Context, cc grpc.ClientConnInterface, o FetchOptions) (Snapshot, error) {
	types := o.TypeURLs
	if len(types) == 0 {
		types = []string{AddressTypeURL, AuthorizationTypeURL}
	}
	node := o.Node
	if node == nil {
		node = &corev3.Node{Id: "peerd-view", UserAgentName: "peerd-view"}
	}
	held := map[string]map[string]proto.Message{}
	for _, t := range types {
		if t != AddressTypeURL && t != AuthorizationTypeURL {
			return Snapshot{}, fmt.Errorf("view: type %q: want %s or %s", t, AddressTypeURL, AuthorizationTypeURL)
		}
		held[t] = map[string]proto.Message{}
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).DeltaAggregatedResources(ctx)
	if err != nil {
		return Snapshot{}, fmt.Errorf("view: open delta ADS stream: %w", err)
	}
	for _, t := range types {
		// Empty subscribe list on the first request: wildcard.
		if err := stream.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: t, Node: node}); err != nil {
			return Snapshot{}, fmt.Errorf("view: subscribe %s: %w", t, sendErr(stream, err))
		}
	}

	synced := map[string]bool{}
	for len(synced) < len(types) {
		resp, err := stream.Recv()
		if err != nil {
			return Snapshot{}, fmt.Errorf("view: waiting for %s: %w", pending(types, synced), err)
		}
		t := resp.GetTypeUrl()
		h, ok := held[t]
		if !ok {
			return Snapshot{}, fmt.Errorf("view: response nonce %q: type %q was not subscribed", resp.GetNonce(), t)
		}
		if errs := apply(h, resp); len(errs) > 0 {
			// NACK first, so the server logs and counts what it sent wrong.
			detail := strings.Join(errs, "; ")
			if stream.Send(&discoveryv3.DeltaDiscoveryRequest{
				TypeUrl:       t,
				ResponseNonce: resp.GetNonce(),
				ErrorDetail:   &statuspb.Status{Code: int32(codes.InvalidArgument), Message: detail},
			}) == nil {
				finish(ctx, cancel, stream)
			}
			return Snapshot{}, fmt.Errorf("view: %s response nonce %q rejected: %s", t, resp.GetNonce(), detail)
		}
		if err := stream.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: t, ResponseNonce: resp.GetNonce()}); err != nil {
			return Snapshot{}, fmt.Errorf("view: ACK %s nonce %q: %w", t, resp.GetNonce(), sendErr(stream, err))
		}
		synced[t] = true
	}

	finish(ctx, cancel, stream)

	var s Snapshot
	for _, m := range held[AddressTypeURL] {
		s.Addresses = append(s.Addresses, m.(*workloadpb.Address))
	}
	for _, m := range held[AuthorizationTypeURL] {
		s.Authorizations = append(s.Authorizations, m.(*securitypb.Authorization))
	}
	s.Addresses = sortedAddresses(s.Addresses)
	s.Authorizations = sortedPolicies(s.Authorizations)
	return s, nil
}

// apply decodes a response into h: updates first, then removals, as
// ztunnel applies them. It returns one "<name>: <error>" per resource that
// does not decode; the valid ones are applied regardless.
func apply(h map[string]proto.Message, resp *discoveryv3.DeltaDiscoveryResponse) []string {
	var errs []string
	for _, r := range resp.GetResources() {
		name := r.GetName()
		body := r.GetResource()
		if body == nil {
			errs = append(errs, name+": no resource body")
			continue
		}
		if body.GetTypeUrl() != resp.GetTypeUrl() {
			errs = append(errs, fmt.Sprintf("%s: body type %q in a %q response", name, body.GetTypeUrl(), resp.GetTypeUrl()))
			continue
		}
		m, err := body.UnmarshalNew()
		if err != nil {
			errs = append(errs, fmt.Sprintf("%s: %v", name, err))
			continue
		}
		if a, ok := m.(*workloadpb.Address); ok && a.GetType() == nil {
			errs = append(errs, name+": address is neither a workload nor a service")
			continue
		}
		h[name] = m
	}
	for _, name := range resp.GetRemovedResources() {
		delete(h, name)
	}
	return errs
}

// finish half-closes the stream and lets the server end it, so the last
// ACK or NACK is delivered rather than raced by a reset; at most ackGrace.
func finish(ctx context.Context, cancel context.CancelFunc, stream deltaStream) {
	defer cancel()
	if stream.CloseSend() != nil {
		return
	}
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		for {
			if _, err := stream.Recv(); err != nil {
				return
			}
		}
	}()
	timer := time.NewTimer(ackGrace)
	defer timer.Stop()
	select {
	case <-drained:
	case <-timer.C:
	case <-ctx.Done():
	}
	cancel() // ends the drain if the server has not
	<-drained
}

type deltaStream = grpc.BidiStreamingClient[discoveryv3.DeltaDiscoveryRequest, discoveryv3.DeltaDiscoveryResponse]

func pending(types []string, synced map[string]bool) string {
	var p []string
	for _, t := range types {
		if !synced[t] {
			p = append(p, t)
		}
	}
	return "first response for " + strings.Join(p, ", ")
}

// sendErr turns the io.EOF of a failed Send into the stream's real status,
// which only Recv reports.
func sendErr(stream deltaStream, err error) error {
	if !errors.Is(err, io.EOF) {
		return err
	}
	if _, rerr := stream.Recv(); rerr != nil {
		return rerr
	}
	return err
}
