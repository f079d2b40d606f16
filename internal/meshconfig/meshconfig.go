// Package meshconfig reads istiod's mesh config where istiod keeps it: the
// YAML under the key "mesh" of a ConfigMap (by default "istio") in the
// system namespace, parsed with istio.io/api's MeshConfig. peerd serve
// takes its trust domain from it; the operator CLI reads a target cluster's.
//
// It never writes the ConfigMap and never guesses: a config that cannot be
// parsed is an error naming the ConfigMap and the key.
package meshconfig

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"
	meshv1alpha1 "istio.io/api/mesh/v1alpha1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"sigs.k8s.io/yaml"
)

const (
	// DefaultConfigMap is the ConfigMap istiod's chart installs.
	DefaultConfigMap = "istio"
	// Key is the data key istiod reads its mesh config from.
	Key = "mesh"
)

// ErrInvalid is wrapped by Get's error when the ConfigMap holds something
// that is not a mesh config (as opposed to the API failing to answer).
var ErrInvalid = errors.New("not a mesh config")

// Parse reads mesh config YAML. Fields this version does not know (a newer
// istiod's) are skipped, so an upgrade of istiod does not break the reader;
// YAML that is not a MeshConfig is an error. Empty text is the empty config,
// as for istiod.
func Parse(text string) (*meshv1alpha1.MeshConfig, error) {
	mc := &meshv1alpha1.MeshConfig{}
	if strings.TrimSpace(text) == "" {
		return mc, nil
	}
	js, err := yaml.YAMLToJSON([]byte(text))
	if err != nil {
		return nil, err
	}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(js, mc); err != nil {
		return nil, err
	}
	return mc, nil
}

// Get reads and parses the mesh config of the ConfigMap name. A missing
// ConfigMap, or one without the key, is (nil, nil): the mesh runs on
// istiod's defaults. Errors name the ConfigMap (and the key when its
// content is wrong).
func Get(ctx context.Context, configMaps corev1client.ConfigMapInterface, namespace, name string) (*meshv1alpha1.MeshConfig, error) {
	cm, err := configMaps.Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("configmap %s/%s: %w", namespace, name, err)
	}
	text, ok := cm.Data[Key]
	if !ok {
		return nil, nil
	}
	mc, err := Parse(text)
	if err != nil {
		return nil, fmt.Errorf("configmap %s/%s: data.%s: %w: %w", namespace, name, Key, ErrInvalid, err)
	}
	return mc, nil
}
