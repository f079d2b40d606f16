package clusterops

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayv1client "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned/typed/apis/v1"
)

// Action is what an operation did to one object.
type Action string

const (
	Created   Action = "created"
	Updated   Action = "updated"
	Unchanged Action = "unchanged"
	Deleted   Action = "deleted"
	NotFound  Action = "not found"
)

// Change is the result of an operation on one object.
type Change struct {
	// Context is the cluster the object is in.
	Context string
	// Object is "gateway namespace/name".
	Object string
	Action Action
	// Details say what an update changed, one field each.
	Details []string
}

func (c Change) String() string {
	s := fmt.Sprintf("%s: %s %s", c.Context, c.Object, c.Action)
	if len(c.Details) > 0 {
		s += ": " + strings.Join(c.Details, "; ")
	}
	return s
}

// owned says which metadata keys an applied Gateway owns: those keys are
// set as wanted, and removed when the wanted object lacks them; every other
// key is left as found.
type owned struct {
	labels, annotations []string
}

// applyGateway creates want, or updates the existing Gateway of that name
// where what it owns differs: the owned labels and annotations, spec
// addresses (when want has any) and the listeners want names (others are
// kept). A Gateway of another class is an error, never taken over.
func applyGateway(ctx context.Context, cluster string, client gatewayv1client.GatewayInterface, want *gatewayv1.Gateway, own owned) (Change, error) {
	ch := Change{Context: cluster, Object: "gateway " + want.Namespace + "/" + want.Name}
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := client.Get(ctx, want.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			_, err = client.Create(ctx, want, metav1.CreateOptions{})
			ch.Action, ch.Details = Created, nil
			return err
		}
		if err != nil {
			return err
		}
		if cur.Spec.GatewayClassName != want.Spec.GatewayClassName {
			return fmt.Errorf("spec.gatewayClassName is %q, not %q: not peerd's to change (delete it, or use another name)",
				cur.Spec.GatewayClassName, want.Spec.GatewayClassName)
		}
		next := cur.DeepCopy()
		var details []string
		details = append(details, mergeKeys("labels", &next.Labels, want.Labels, own.labels)...)
		details = append(details, mergeKeys("annotations", &next.Annotations, want.Annotations, own.annotations)...)
		if len(want.Spec.Addresses) > 0 && !slices.Equal(addressValues(next.Spec.Addresses), addressValues(want.Spec.Addresses)) {
			details = append(details, fmt.Sprintf("spec.addresses: %v → %v", addressValues(next.Spec.Addresses), addressValues(want.Spec.Addresses)))
			next.Spec.Addresses = want.Spec.Addresses
		}
		details = append(details, mergeListeners(&next.Spec.Listeners, want.Spec.Listeners)...)
		if len(details) == 0 {
			ch.Action, ch.Details = Unchanged, nil
			return nil
		}
		_, err = client.Update(ctx, next, metav1.UpdateOptions{})
		ch.Action, ch.Details = Updated, details
		return err
	})
	if err != nil {
		return Change{}, fmt.Errorf("context %s: %s: %w", cluster, ch.Object, err)
	}
	return ch, nil
}

// mergeKeys sets the owned keys of *cur to want's values (removing those
// want lacks) and returns one detail per key changed.
func mergeKeys(field string, cur *map[string]string, want map[string]string, keys []string) []string {
	var details []string
	for _, k := range keys {
		old, had := (*cur)[k]
		v, ok := want[k]
		switch {
		case ok && (!had || old != v):
			if *cur == nil {
				*cur = map[string]string{}
			}
			(*cur)[k] = v
			if had {
				details = append(details, fmt.Sprintf("%s[%s]: %q → %q", field, k, old, v))
			} else {
				details = append(details, fmt.Sprintf("%s[%s]: set %q", field, k, v))
			}
		case !ok && had:
			delete(*cur, k)
			details = append(details, fmt.Sprintf("%s[%s]: removed %q", field, k, old))
		}
	}
	return details
}

// mergeListeners replaces or appends the listeners of want by name,
// comparing only what peerd sets (port, protocol, TLS mode): the API
// server's defaults (allowedRoutes) never count as a difference.
func mergeListeners(cur *[]gatewayv1.Listener, want []gatewayv1.Listener) []string {
	var details []string
	for _, w := range want {
		i := slices.IndexFunc(*cur, func(l gatewayv1.Listener) bool { return l.Name == w.Name })
		if i < 0 {
			*cur = append(*cur, w)
			details = append(details, fmt.Sprintf("spec.listeners[%s]: added (%d/%s)", w.Name, w.Port, w.Protocol))
			continue
		}
		c := (*cur)[i]
		if c.Port == w.Port && c.Protocol == w.Protocol && tlsMode(c) == tlsMode(w) {
			continue
		}
		details = append(details, fmt.Sprintf("spec.listeners[%s]: %d/%s/%s → %d/%s/%s", w.Name,
			c.Port, c.Protocol, tlsMode(c), w.Port, w.Protocol, tlsMode(w)))
		(*cur)[i] = w
	}
	return details
}

func tlsMode(l gatewayv1.Listener) string {
	if l.TLS == nil || l.TLS.Mode == nil {
		return ""
	}
	return string(*l.TLS.Mode)
}

func addressValues(as []gatewayv1.GatewaySpecAddress) []string {
	out := make([]string, len(as))
	for i, a := range as {
		out[i] = a.Value
	}
	return out
}

func sortStrings(s []string) { sort.Strings(s) }
