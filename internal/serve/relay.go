package serve

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/proto"

	"github.com/peerd-mesh/peerd/internal/ambient"
	"github.com/peerd-mesh/peerd/internal/certs"
	"github.com/peerd-mesh/peerd/internal/discovery/istiod"
	"github.com/peerd-mesh/peerd/internal/xds"
	workloadpb "github.com/peerd-mesh/peerd/proto/istio/workload"
)

// Extension mode (docs/extension-mode.md): with --istiod-address the local
// cluster is istiod's own ztunnel stream, relayed; the model still runs on
// peerd's informers (or files) for the scope labels, the exports and the
// mesh it adds, and the Merger lays that mesh over istiod's resources.

// istiodRelay is the relay source and what the model loop needs to merge it.
type istiodRelay struct {
	source         *istiod.Source
	authorizations *xds.Cache
	log            *zap.Logger

	// merger is made by the model loop, which owns it.
	merger *ambient.Merger
	// mu guards reported, which /debug/istiod reads; the model loop writes it.
	mu sync.Mutex
	// reported: the conflicts already logged.
	reported       map[string]bool
	conflicts      prometheus.Gauge
	conflictsTotal prometheus.Counter
}

// newIstiodRelay returns nil when --istiod-address is not set (standalone
// mode).
func newIstiodRelay(opts Options, authorizations *xds.Cache, log *zap.Logger, reg prometheus.Registerer) (*istiodRelay, error) {
	if opts.IstiodAddress == "" {
		return nil, nil
	}
	log = log.Named("istiod")
	dial, err := istiodDial(opts)
	if err != nil {
		return nil, err
	}
	source, err := istiod.New(istiod.Options{
		Address:    opts.IstiodAddress,
		Dial:       dial,
		Node:       relayNode(opts),
		Logger:     log,
		Registerer: reg,
	})
	if err != nil {
		return nil, err
	}
	r := &istiodRelay{
		source:         source,
		authorizations: authorizations,
		log:            log,
		reported:       map[string]bool{},
		conflicts: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "peerd_istiod_conflicts",
			Help: "Resource names istiod and the linked mesh both produce (istiod's version is served), and global keys istiod's workloads list with other ports.",
		}),
		conflictsTotal: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "peerd_istiod_conflicts_total",
			Help: "Distinct conflicts between istiod's resources and the linked mesh's seen since start.",
		}),
	}
	reg.MustRegister(r.conflicts, r.conflictsTotal)
	return r, nil
}

// istiodDial is how peerd reaches istiod: plaintext (nil: the source's
// default), or TLS with ztunnel's credentials.
func istiodDial(opts Options) (func(context.Context, ...grpc.DialOption) (*grpc.ClientConn, error), error) {
	if !opts.IstiodTLS {
		return nil, nil
	}
	caFile := opts.IstiodCAFile
	if caFile == "" {
		caFile = filepath.Join(opts.CADir, "root-cert.pem")
	}
	serverName := opts.IstiodServerName
	if serverName == "" {
		serverName = "istiod." + opts.SystemNamespace + ".svc"
	}
	tlsConfig, err := certs.ClientTLSConfig(caFile, serverName)
	if err != nil {
		return nil, fmt.Errorf("--istiod-ca-file %s: %w", caFile, err)
	}
	token := tokenCredentials{file: opts.IstiodTokenFile, cluster: opts.ClusterName}
	if _, err := token.read(); err != nil {
		return nil, err
	}
	return xds.DialTarget(opts.IstiodAddress, grpc.WithTransportCredentials(credentials.NewTLS(tlsConfig)), grpc.WithPerRPCCredentials(token)), nil
}

// tokenCredentials send what ztunnel sends istiod: its service-account
// token, read from the file on every stream because the kubelet rotates it,
// and its cluster.
type tokenCredentials struct {
	file, cluster string
}

func (c tokenCredentials) read() (string, error) {
	b, err := os.ReadFile(c.file)
	if err != nil {
		return "", fmt.Errorf("--istiod-token-file: %w", err)
	}
	token := strings.TrimSpace(string(b))
	if token == "" {
		return "", fmt.Errorf("--istiod-token-file %s: empty", c.file)
	}
	return token, nil
}

func (c tokenCredentials) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	token, err := c.read()
	if err != nil {
		return nil, err
	}
	return map[string]string{"authorization": "Bearer " + token, "clusterid": c.cluster}, nil
}

// RequireTransportSecurity: a token never goes out in the clear.
func (tokenCredentials) RequireTransportSecurity() bool { return true }

// relayNode is the ztunnel peerd stands in for towards istiod: its own pod
// as the downward API gives it (POD_NAME, POD_NAMESPACE, POD_IP, NODE_NAME),
// with defaults for a process outside Kubernetes.
func relayNode(opts Options) istiod.NodeInfo {
	env := func(name, def string) string {
		if v := os.Getenv(name); v != "" {
			return v
		}
		return def
	}
	return istiod.NodeInfo{
		IP:        env("POD_IP", "127.0.0.1"),
		PodName:   env("POD_NAME", "peerd"),
		Namespace: env("POD_NAMESPACE", opts.SystemNamespace),
		NodeName:  env("NODE_NAME", "peerd"),
		ClusterID: opts.ClusterName,
		Network:   opts.Network,
	}
}

// run relays until ctx ends.
func (r *istiodRelay) run(ctx context.Context) {
	if err := r.source.Run(ctx); err != nil {
		r.log.Error("istiod relay stopped", zap.Error(err))
	}
}

// changed signals relayed changes; nil (never ready) without a relay.
func (r *istiodRelay) changed() <-chan struct{} {
	if r == nil {
		return nil
	}
	return r.source.Changed()
}

// waitSynced blocks until istiod's first full state is in, so a ztunnel
// that connects to peerd never sees a mesh without istiod's resources, or a
// source fails first.
func (r *istiodRelay) waitSynced(ctx context.Context, errc <-chan error) error {
	if r == nil {
		return nil
	}
	r.log.Info("waiting for istiod's first full state before serving")
	select {
	case <-r.source.Synced():
		r.log.Info("istiod synced")
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case err := <-errc:
		if err == nil {
			err = errors.New("a source stopped before istiod synced")
		}
		return err
	}
}

// take hands the relayed Authorizations to their cache as they are, and
// returns the relayed Addresses for the merge.
func (r *istiodRelay) take() map[string]*workloadpb.Address {
	addresses, authorizations := r.source.Take()
	if len(authorizations) > 0 {
		var upserts []xds.Resource
		var deletes []string
		for name, a := range authorizations {
			if a == nil {
				deletes = append(deletes, name)
				continue
			}
			upserts = append(upserts, xds.Resource{Name: name, Message: a})
		}
		r.authorizations.Update(upserts, deletes)
	}
	return addresses
}

// merge lays the model's delta and the relayed changes into what to serve
// and export.
func (r *istiodRelay) merge(local map[string]*workloadpb.Address, delta ambient.Delta) ambient.MergeDelta {
	out := r.merger.Apply(local, delta)
	if out.ConflictsChanged {
		r.report(r.merger.Conflicts())
	}
	return out
}

// report logs and counts each conflict when it appears.
func (r *istiodRelay) report(conflicts []string) {
	current := make(map[string]bool, len(conflicts))
	for _, c := range conflicts {
		current[c] = true
		if !r.reported[c] {
			r.log.Error("istiod and the linked mesh disagree; istiod's version is served", zap.String("conflict", c))
			r.conflictsTotal.Inc()
		}
	}
	r.mu.Lock()
	r.reported = current
	r.mu.Unlock()
	r.conflicts.Set(float64(len(current)))
}

// readiness: not ready until istiod's first full state is in; afterwards a
// lost stream is reported stale but peerd stays ready, serving the last
// relayed state (as ztunnel itself does), since failing readiness would
// only move ztunnels to replicas in the same position.
func (r *istiodRelay) readiness() (bool, []string) {
	if r == nil {
		return true, nil
	}
	st := r.source.Status()
	select {
	case <-r.source.Synced():
	default:
		line := "istiod: not synced yet (" + string(st.State) + ")"
		if st.LastError != nil {
			line += ": " + st.LastError.Error()
		}
		return false, []string{line}
	}
	if !st.Stale {
		return true, []string{"istiod: synced (relaying)"}
	}
	line := fmt.Sprintf("istiod: stale since %s (serving the last relayed state; %s)", st.StaleSince.UTC().Format(time.RFC3339), st.State)
	if st.LastError != nil {
		line += ": " + st.LastError.Error()
	}
	return true, []string{line}
}

// resources turns addresses into cache resources with their on-demand keys.
func resources(addrs []*workloadpb.Address) []xds.Resource {
	out := make([]xds.Resource, 0, len(addrs))
	for _, a := range addrs {
		out = append(out, xds.Resource{
			Name:     ambient.ResourceName(a),
			Aliases:  ambient.LookupKeys(a),
			MemberOf: ambient.EndpointOf(a),
			Message:  proto.Message(a),
		})
	}
	return out
}

// serveStatus is /debug/istiod: the relay's connection as the peer links
// show theirs on /debug/peers.
func (r *istiodRelay) serveStatus(w http.ResponseWriter, _ *http.Request) {
	st := r.source.Status()
	out := struct {
		State       xds.ClientState `json:"state"`
		Since       time.Time       `json:"since"`
		Stale       bool            `json:"stale"`
		StaleSince  *time.Time      `json:"staleSince,omitempty"`
		LastError   string          `json:"lastError,omitempty"`
		LastErrorAt *time.Time      `json:"lastErrorAt,omitempty"`
		Connects    int             `json:"connects"`
		Failures    int             `json:"failures"`
		Responses   int             `json:"responses"`
		NACKs       int             `json:"nacks"`
		LastNACK    string          `json:"lastNack,omitempty"`
		Conflicts   []string        `json:"conflicts,omitempty"`
	}{State: st.State, Since: st.Since, Stale: st.Stale, Connects: st.Connects, Failures: st.Failures,
		Responses: st.Responses, NACKs: st.NACKs, LastNACK: st.LastNACK}
	if st.Stale {
		out.StaleSince = &st.StaleSince
	}
	if st.LastError != nil {
		out.LastError, out.LastErrorAt = st.LastError.Error(), &st.LastErrorAt
	}
	r.mu.Lock()
	out.Conflicts = slices.Sorted(maps.Keys(r.reported))
	r.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(out)
}
