package peers

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/kubernetes"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"

	"github.com/peerd-mesh/peerd/internal/kubestate"
)

const (
	// LinkStateKind is the peerd.io/kind label of a link state's Secret.
	LinkStateKind = "link-state"
	// ClusterLabel names the linked cluster (sanitised to a label value);
	// ClusterAnnotation holds its exact id, which Load trusts.
	ClusterLabel      = "peerd.io/cluster"
	ClusterAnnotation = "peerd.io/cluster"

	linkObjectPrefix = "peerd-link-"
	// kubeStoreTimeout bounds each API call: the Store interface has no
	// context, and the final save at shutdown runs after the run context
	// is cancelled.
	kubeStoreTimeout = 10 * time.Second
)

// KubeStore is the Kubernetes-mode Store: each link's state in a Secret
// "peerd-link-<cluster>" of the system namespace (see internal/kubestate for
// why Secrets, the labels and the compression). Several replicas each write
// their own view and the last writer wins (a state carries its save time,
// so replicas overwrite each other even when they agree); a single writer
// comes with leader election.
type KubeStore struct {
	secrets corev1client.SecretInterface
}

// NewKubeStore returns a store in namespace.
func NewKubeStore(client kubernetes.Interface, namespace string) *KubeStore {
	return &KubeStore{secrets: client.CoreV1().Secrets(namespace)}
}

// LinkObjectName is the Secret that holds cluster's link state. A cluster id
// that makes a valid name as it is keeps it ("peerd-link-cluster2"); any
// other is lowered, stripped to valid characters and given a hash of the
// exact id, so every id maps to a valid name and ids that sanitise alike
// ("East" and "east_") still get distinct names.
func LinkObjectName(cluster string) string {
	name := linkObjectPrefix + cluster
	if len(validation.IsDNS1123Label(name)) == 0 {
		return name
	}
	return linkObjectPrefix + sanitized(cluster, validation.DNS1123LabelMaxLength-len(linkObjectPrefix))
}

// clusterLabelValue is cluster as a label value, sanitised like the name
// when it is not a valid one as it is.
func clusterLabelValue(cluster string) string {
	if len(validation.IsValidLabelValue(cluster)) == 0 {
		return cluster
	}
	return sanitized(cluster, validation.LabelValueMaxLength)
}

// sanitized is s lowered, with runs of characters that are not [a-z0-9]
// turned into '-', cut to fit max with "-<hash of s>" appended.
func sanitized(s string, max int) string {
	sum := sha256.Sum256([]byte(s))
	suffix := "-" + hex.EncodeToString(sum[:5])
	var b strings.Builder
	for _, r := range strings.ToLower(s) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
		} else if b.Len() > 0 && !strings.HasSuffix(b.String(), "-") {
			b.WriteByte('-')
		}
	}
	base := strings.Trim(b.String(), "-")
	if limit := max - len(suffix); len(base) > limit {
		base = strings.TrimRight(base[:limit], "-")
	}
	if base == "" {
		return suffix[1:]
	}
	return base + suffix
}

// Load implements Store: every Secret labelled as a link state, by the
// cluster its annotation names. A Secret that cannot be read is reported
// and the rest are returned.
func (s *KubeStore) Load() (map[string][]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), kubeStoreTimeout)
	defer cancel()
	items, err := kubestate.List(ctx, s.secrets, LinkStateKind)
	if err != nil {
		return nil, fmt.Errorf("link states: %w", err)
	}
	out := map[string][]byte{}
	var errs []error
	for i := range items {
		item := &items[i]
		cluster := item.Annotations[ClusterAnnotation]
		if cluster == "" {
			errs = append(errs, fmt.Errorf("link states: secret %s: metadata.annotations: no %s", item.Name, ClusterAnnotation))
			continue
		}
		b, err := kubestate.Payload(item)
		if err != nil {
			errs = append(errs, fmt.Errorf("link states: %w", err))
			continue
		}
		out[cluster] = b
	}
	return out, errors.Join(errs...)
}

// Save implements Store. A Secret of that name that holds another
// cluster's state (a hash collision of sanitised names, in theory) is not
// overwritten.
func (s *KubeStore) Save(cluster string, state []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), kubeStoreTimeout)
	defer cancel()
	name := LinkObjectName(cluster)
	err := kubestate.Put(ctx, s.secrets, kubestate.Object{
		Name:        name,
		Kind:        LinkStateKind,
		Labels:      map[string]string{ClusterLabel: clusterLabelValue(cluster)},
		Annotations: map[string]string{ClusterAnnotation: cluster},
		Payload:     state,
		Guard: func(existing *corev1.Secret) error {
			if other := existing.Annotations[ClusterAnnotation]; other != cluster {
				return fmt.Errorf("holds the state of cluster %q: not overwritten", other)
			}
			return nil
		},
	})
	if err != nil {
		return fmt.Errorf("saving link %s: %w", cluster, err)
	}
	return nil
}

// Delete implements Store.
func (s *KubeStore) Delete(cluster string) error {
	ctx, cancel := context.WithTimeout(context.Background(), kubeStoreTimeout)
	defer cancel()
	if err := kubestate.Delete(ctx, s.secrets, LinkObjectName(cluster)); err != nil {
		return fmt.Errorf("deleting link %s: %w", cluster, err)
	}
	return nil
}
