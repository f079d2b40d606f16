package clusterops

import (
	"context"
	"errors"
	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/peerd-mesh/peerd/internal/federation"
)

// Pair is one direction of a link: From gets a link Gateway describing To.
type Pair struct{ From, To *Cluster }

// AllPairs is every ordered pair of distinct clusters: each linked to
// every other, both ways.
func AllPairs(clusters []*Cluster) []Pair {
	var out []Pair
	for _, from := range clusters {
		for _, to := range clusters {
			if from != to {
				out = append(out, Pair{From: from, To: to})
			}
		}
	}
	return out
}

// linkOwned are the keys of a link Gateway that `peerd link` sets.
var linkOwned = owned{
	labels:      []string{federation.LabelNetwork, federation.LabelCluster, federation.LabelRegion, federation.LabelZone},
	annotations: []string{federation.AnnotationTrustDomain, federation.AnnotationServiceAccount},
}

// Describe is the link Gateway that describes c, for another cluster to
// apply (`peerd link --generate`).
func Describe(ctx context.Context, c *Cluster, cfg Config) (*gatewayv1.Gateway, error) {
	s := Observe(ctx, c, cfg, false)
	l, err := s.TargetLink()
	if err != nil {
		return nil, err
	}
	return federation.RenderLink(l), nil
}

// Link writes, for each pair, the link Gateway describing To into From.
// Every target is read and validated, and every source's namespace
// checked, before anything is written: one missing piece anywhere and
// nothing is. Two contexts that are the same cluster id is an error.
func Link(ctx context.Context, pairs []Pair, cfg Config) ([]Change, error) {
	cfg = cfg.withDefaults()
	links := map[*Cluster]federation.Link{}
	var errs []error
	byID := map[string]string{}
	for _, p := range pairs {
		if _, done := links[p.To]; done {
			continue
		}
		s := Observe(ctx, p.To, cfg, false)
		l, err := s.TargetLink()
		if err != nil {
			errs = append(errs, err)
			links[p.To] = federation.Link{}
			continue
		}
		if other, dup := byID[l.Cluster]; dup {
			errs = append(errs, fmt.Errorf("contexts %s and %s both say they are cluster %q: a link names one cluster", other, p.To.Context, l.Cluster))
		}
		byID[l.Cluster] = p.To.Context
		links[p.To] = l
	}
	sourceIDs := map[*Cluster]string{}
	for _, p := range pairs {
		if _, done := sourceIDs[p.From]; !done {
			if err := p.From.requireNamespace(ctx, cfg.Namespace); err != nil {
				errs = append(errs, err)
			}
			s := Observe(ctx, p.From, cfg, false)
			if s.Err != nil {
				errs = append(errs, s.Err)
			}
			sourceIDs[p.From] = s.ClusterID()
		}
		// Two contexts for one cluster: the link would point the cluster at
		// itself.
		if id := links[p.To].Cluster; id != "" && id == sourceIDs[p.From] {
			errs = append(errs, fmt.Errorf("contexts %s and %s are both cluster %q: a cluster is not linked to itself", p.From.Context, p.To.Context, id))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("nothing linked:\n%w", err)
	}
	var changes []Change
	for _, p := range pairs {
		ch, err := applyGateway(ctx, p.From.Context, p.From.Gateway.GatewayV1().Gateways(cfg.Namespace), federation.RenderLink(links[p.To]), linkOwned)
		if err != nil {
			return changes, err
		}
		changes = append(changes, ch)
	}
	return changes, nil
}

// Unlink deletes, for each pair, the link Gateways in From that link To:
// class istio-remote and naming To's cluster id (label cluster, else
// network). Gateways of other classes are never touched. A pair with no
// link says so (Action NotFound).
func Unlink(ctx context.Context, pairs []Pair, cfg Config) ([]Change, error) {
	cfg = cfg.withDefaults()
	ids := map[*Cluster]string{}
	var errs []error
	for _, p := range pairs {
		if _, done := ids[p.To]; done {
			continue
		}
		s := Observe(ctx, p.To, cfg, false)
		if s.Err != nil {
			errs = append(errs, s.Err)
			continue
		}
		if ids[p.To] = s.ClusterID(); ids[p.To] == "" {
			errs = append(errs, fmt.Errorf("context %s: no cluster id: neither a %s label on its east-west Gateway nor a %s label on namespace %s",
				p.To.Context, federation.LabelCluster, federation.LabelNetwork, cfg.SystemNamespace))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("nothing unlinked:\n%w", err)
	}
	var changes []Change
	for _, p := range pairs {
		client := p.From.Gateway.GatewayV1().Gateways(cfg.Namespace)
		list, err := client.List(ctx, metav1.ListOptions{})
		if err != nil {
			return changes, fmt.Errorf("context %s: gateways in %s: %w", p.From.Context, cfg.Namespace, err)
		}
		found := false
		for i := range list.Items {
			gw := &list.Items[i]
			if !federation.IsRemote(gw) || linkedID(gw) != ids[p.To] {
				continue
			}
			found = true
			ch := Change{Context: p.From.Context, Object: "gateway " + gw.Namespace + "/" + gw.Name, Action: Deleted,
				Details: []string{"the link to " + p.To.Context}}
			if err := client.Delete(ctx, gw.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &gw.UID}}); err != nil {
				return changes, fmt.Errorf("context %s: %s: %w", p.From.Context, ch.Object, err)
			}
			changes = append(changes, ch)
		}
		if !found {
			changes = append(changes, Change{Context: p.From.Context, Object: "link to " + p.To.Context, Action: NotFound})
		}
	}
	return changes, nil
}

// linkedID is the cluster id a link Gateway names, read as ParseLink
// does, but also from a link too broken to parse, so unlink removes it.
func linkedID(gw *gatewayv1.Gateway) string {
	if id := gw.Labels[federation.LabelCluster]; id != "" {
		return id
	}
	return gw.Labels[federation.LabelNetwork]
}
