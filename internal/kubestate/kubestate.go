// Package kubestate keeps peerd's own state in the Kubernetes API, one
// Secret per piece of state in the system namespace, so that a rescheduled
// pod and every replica find it: the last known state of each peer link
// (internal/discovery/peers.KubeStore) and the VIPs of global services
// (internal/serve).
//
// Secrets rather than ConfigMaps: the link states hold what other clusters
// exported (service names, SPIFFE identities, ports), and the VIP table the
// names of services that exist only remotely. Secrets keep that out of the
// broad read access clusters commonly grant on ConfigMaps (the built-in
// "view" role reads ConfigMaps but not Secrets), and they are what
// encryption at rest covers.
//
// Each Secret holds one gzip-compressed payload under PayloadKey. The
// payloads are JSON that repeats its field names and hostnames, so gzip
// raises the number of services one object can hold (a link state shrinks
// about 5:1, some 20,000 simple services per Secret: see the peers
// package's BenchmarkLinkStateSize); a payload that is
// still too large after compression is an error naming the object, never a
// truncated write. Writes never run concurrently within one process (each
// caller is single-threaded); between replicas the last writer wins.
package kubestate

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/util/retry"
)

const (
	// ManagedByLabel / ManagedBy and KindLabel mark every object peerd keeps
	// its state in; lists select on both, so nothing else is ever read.
	ManagedByLabel = "app.kubernetes.io/managed-by"
	ManagedBy      = "peerd"
	KindLabel      = "peerd.io/kind"

	// SecretType sets the Secrets apart from credentials (and keeps tools
	// that look for service-account tokens or TLS pairs away from them).
	SecretType corev1.SecretType = "peerd.io/state"
	// PayloadKey is the data key of the gzip-compressed payload.
	PayloadKey = "state.json.gz"
	// LeaseName is the coordination.k8s.io Lease, in the system namespace,
	// that peerd's replicas elect their one status writer with. Its holder
	// (a pod name) renews it every few seconds, so an unexpired Lease also
	// tells `peerd check` that peerd is alive.
	LeaseName = "peerd"

	// MaxPayload is the most a Secret holds (the API server's limit on the
	// sum of its data); the check before a write turns the API server's
	// generic "Too long" into an error that says what grew too large.
	MaxPayload = 1 << 20
)

// Object is one piece of state: a Secret named Name, labelled with Kind and
// Labels (on top of the managed-by label), carrying Annotations and Payload.
type Object struct {
	Name        string
	Kind        string
	Labels      map[string]string
	Annotations map[string]string
	Payload     []byte
	// Guard, when set, vets an existing Secret before Put replaces it (for
	// example: it holds the state of the same link); its error stops the
	// write.
	Guard func(existing *corev1.Secret) error
}

// Put creates or replaces the Secret of o. A write that changes nothing
// (another replica already wrote the same bytes) is skipped. Conflicts with
// a concurrent writer are retried on a fresh copy: each write is atomic, and
// the last one wins.
func Put(ctx context.Context, secrets corev1client.SecretInterface, o Object) error {
	data, err := Compress(o.Payload)
	if err != nil {
		return fmt.Errorf("secret %s: %w", o.Name, err)
	}
	if len(data) > MaxPayload {
		return fmt.Errorf("secret %s: %d bytes after compression (%d before), more than the %d a Secret holds",
			o.Name, len(data), len(o.Payload), MaxPayload)
	}
	objLabels := map[string]string{ManagedByLabel: ManagedBy, KindLabel: o.Kind}
	for k, v := range o.Labels {
		objLabels[k] = v
	}
	retriable := func(err error) bool { return apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err) }
	err = retry.OnError(retry.DefaultBackoff, retriable, func() error {
		cur, err := secrets.Get(ctx, o.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			_, err = secrets.Create(ctx, &corev1.Secret{
				ObjectMeta: metav1.ObjectMeta{Name: o.Name, Labels: objLabels, Annotations: o.Annotations},
				Type:       SecretType,
				Data:       map[string][]byte{PayloadKey: data},
			}, metav1.CreateOptions{})
			return err
		}
		if err != nil {
			return err
		}
		if err := owned(cur, o.Kind); err != nil {
			return err
		}
		if o.Guard != nil {
			if err := o.Guard(cur); err != nil {
				return err
			}
		}
		if bytes.Equal(cur.Data[PayloadKey], data) && len(cur.Data) == 1 &&
			isSubset(objLabels, cur.Labels) && isSubset(o.Annotations, cur.Annotations) {
			return nil
		}
		next := cur.DeepCopy()
		if next.Labels == nil {
			next.Labels = map[string]string{}
		}
		for k, v := range objLabels {
			next.Labels[k] = v
		}
		if next.Annotations == nil && len(o.Annotations) > 0 {
			next.Annotations = map[string]string{}
		}
		for k, v := range o.Annotations {
			next.Annotations[k] = v
		}
		next.Data = map[string][]byte{PayloadKey: data}
		_, err = secrets.Update(ctx, next, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return fmt.Errorf("secret %s: %w", o.Name, err)
	}
	return nil
}

// owned refuses to overwrite a Secret that peerd did not create for kind: a
// name that happens to be taken must not lose its data.
func owned(s *corev1.Secret, kind string) error {
	if s.Labels[ManagedByLabel] != ManagedBy || s.Labels[KindLabel] != kind {
		return fmt.Errorf("exists but is not peerd's %s (labels %s=%q, %s=%q): not overwritten",
			kind, ManagedByLabel, s.Labels[ManagedByLabel], KindLabel, s.Labels[KindLabel])
	}
	return nil
}

func isSubset(want, have map[string]string) bool {
	for k, v := range want {
		if hv, ok := have[k]; !ok || hv != v {
			return false
		}
	}
	return true
}

// Get returns the payload of the Secret name of kind, or nil when there is
// none.
func Get(ctx context.Context, secrets corev1client.SecretInterface, name, kind string) ([]byte, error) {
	s, err := secrets.Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("secret %s: %w", name, err)
	}
	if err := owned(s, kind); err != nil {
		return nil, fmt.Errorf("secret %s: %w", name, err)
	}
	return Payload(s)
}

// List returns every Secret of kind. Secrets without both labels are not
// peerd's and are never returned.
func List(ctx context.Context, secrets corev1client.SecretInterface, kind string) ([]corev1.Secret, error) {
	sel := labels.SelectorFromSet(labels.Set{ManagedByLabel: ManagedBy, KindLabel: kind})
	list, err := secrets.List(ctx, metav1.ListOptions{LabelSelector: sel.String()})
	if err != nil {
		return nil, fmt.Errorf("listing secrets %s: %w", sel, err)
	}
	return list.Items, nil
}

// Payload decompresses s's payload.
func Payload(s *corev1.Secret) ([]byte, error) {
	data, ok := s.Data[PayloadKey]
	if !ok {
		return nil, fmt.Errorf("secret %s: data: no key %s", s.Name, PayloadKey)
	}
	zr, err := gzip.NewReader(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("secret %s: data.%s: %w", s.Name, PayloadKey, err)
	}
	b, err := io.ReadAll(zr)
	if err != nil {
		return nil, fmt.Errorf("secret %s: data.%s: %w", s.Name, PayloadKey, err)
	}
	return b, nil
}

// Delete removes the Secret name; a missing one is not an error.
func Delete(ctx context.Context, secrets corev1client.SecretInterface, name string) error {
	err := secrets.Delete(ctx, name, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("secret %s: %w", name, err)
	}
	return nil
}

// Compress gzips b the way Put stores it. The output depends only on b (no
// timestamp in the header), so replicas that agree write identical bytes
// and Put can skip the write.
func Compress(b []byte) ([]byte, error) {
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if err != nil {
		return nil, err
	}
	if _, err := zw.Write(b); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
