package view

import (
	"context"
	"errors"
	"fmt"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	"github.com/peerd-mesh/peerd/internal/certs"
	"github.com/peerd-mesh/peerd/internal/xds"
	securitypb "github.com/peerd-mesh/peerd/proto/istio/security"
	workloadpb "github.com/peerd-mesh/peerd/proto/istio/workload"
)

// Type URLs ztunnel subscribes to, the ones Fetch accepts.
const (
	AddressTypeURL       = "type.googleapis.com/istio.workload.Address"
	AuthorizationTypeURL = "type.googleapis.com/istio.security.Authorization"
)

// MaxRecvMsgSize is ztunnel's own receive limit. A whole-mesh initial
// response is far above grpc-go's 4 MiB default.
const MaxRecvMsgSize = 200 << 20

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

// Fetch opens one delta-ADS stream (internal/xds's Client in one-shot mode
// over cc), subscribes as a wildcard client to each type, and returns once
// every type has had its first response (the full state, since a wildcard
// client holds nothing yet). Every response is ACKed; a response with a
// resource that does not decode is NACKed (error_detail lists
// "<name>: <error>" as ztunnel does) and Fetch fails. Responses that arrive
// for a type already synced, before the others are, are applied too, so the
// snapshot is never older than the last response read.
func Fetch(ctx context.Context, cc grpc.ClientConnInterface, o FetchOptions) (Snapshot, error) {
	types := o.TypeURLs
	if len(types) == 0 {
		types = []string{AddressTypeURL, AuthorizationTypeURL}
	}
	node := o.Node
	if node == nil {
		node = &corev3.Node{Id: "peerd-view", UserAgentName: "peerd-view"}
	}
	for _, t := range types {
		if t != AddressTypeURL && t != AuthorizationTypeURL {
			return Snapshot{}, fmt.Errorf("view: type %q: want %s or %s", t, AddressTypeURL, AuthorizationTypeURL)
		}
	}

	synced := map[string]bool{} // written by OnUpdate, on this goroutine
	c := xds.NewClient(xds.ClientOptions{
		Conn:     cc,
		TypeURLs: types,
		Node:     node,
		Validate: func(_ string, r *discoveryv3.Resource) error {
			_, err := decode(r)
			return err
		},
		OnUpdate: func(u xds.Update) {
			if u.Synced {
				synced[u.TypeURL] = true
			}
		},
	})
	if err := c.RunOnce(ctx); err != nil {
		if nack := (*xds.NACKError)(nil); errors.As(err, &nack) {
			return Snapshot{}, fmt.Errorf("view: %w", err)
		}
		return Snapshot{}, fmt.Errorf("view: waiting for %s: %w", pending(types, synced), err)
	}

	var s Snapshot
	for _, t := range types {
		for _, r := range c.Resources(t) {
			m, err := decode(r) // accepted by Validate: cannot fail
			if err != nil {
				return Snapshot{}, fmt.Errorf("view: %s: %w", r.GetName(), err)
			}
			switch m := m.(type) {
			case *workloadpb.Address:
				s.Addresses = append(s.Addresses, m)
			case *securitypb.Authorization:
				s.Authorizations = append(s.Authorizations, m)
			}
		}
	}
	s.Addresses = sortedAddresses(s.Addresses)
	s.Authorizations = sortedPolicies(s.Authorizations)
	return s, nil
}

// decode decodes one resource whose body the Client has checked to be of
// the response's type, and rejects an Address that is neither a workload
// nor a service, as ztunnel does.
func decode(r *discoveryv3.Resource) (proto.Message, error) {
	m, err := r.GetResource().UnmarshalNew()
	if err != nil {
		return nil, err
	}
	if a, ok := m.(*workloadpb.Address); ok && a.GetType() == nil {
		return nil, errors.New("address is neither a workload nor a service")
	}
	return m, nil
}

func pending(types []string, synced map[string]bool) string {
	var p []string
	for _, t := range types {
		if !synced[t] {
			p = append(p, t)
		}
	}
	return "first response for " + strings.Join(p, ", ")
}
