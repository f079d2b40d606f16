package serve

import (
	"context"
	"strings"
	"testing"

	"go.uber.org/zap/zaptest"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	kubeharness "github.com/peerd-mesh/peerd/test/kube"
)

// TestLoadMeshConfig: the trust domain comes from istiod's ConfigMap unless
// the flag was given; without the ConfigMap the flag's value stays; a
// ConfigMap that is not a mesh config stops peerd with an error naming it.
func TestLoadMeshConfig(t *testing.T) {
	kube := kubeharness.Start(t, kubeharness.Options{})
	createNamespace(t, kube, liveStateNamespace)
	ctx := context.Background()
	configMaps := kube.Kube.CoreV1().ConfigMaps(liveStateNamespace)
	setMesh := func(text string) {
		t.Helper()
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "istio", Namespace: liveStateNamespace}, Data: map[string]string{"mesh": text}}
		if _, err := configMaps.Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
			if _, err := configMaps.Create(ctx, cm, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	load := func(explicit ...string) (Options, error) {
		opts := DefaultOptions()
		opts.SystemNamespace = liveStateNamespace
		err := loadMeshConfig(ctx, kube.Kube, &opts, func(flag string) bool {
			for _, f := range explicit {
				if f == flag {
					return true
				}
			}
			return false
		}, zaptest.NewLogger(t))
		return opts, err
	}

	if opts, err := load(); err != nil || opts.TrustDomain != "cluster.local" {
		t.Errorf("without the ConfigMap: trust domain %q, %v; want the default and no error", opts.TrustDomain, err)
	}

	setMesh("trustDomain: cluster1.example\nrootNamespace: istio-system\nnewFieldOfALaterIstio: true\n")
	if opts, err := load(); err != nil || opts.TrustDomain != "cluster1.example" {
		t.Errorf("from the ConfigMap: trust domain %q, %v; want cluster1.example", opts.TrustDomain, err)
	}
	if opts, err := load("trust-domain"); err != nil || opts.TrustDomain != "cluster.local" {
		t.Errorf("with --trust-domain set: trust domain %q, %v; want the flag's", opts.TrustDomain, err)
	}

	setMesh("trustDomain: [cluster1.example\n")
	_, err := load()
	if err == nil || !strings.Contains(err.Error(), "configmap istio-system/istio") || !strings.Contains(err.Error(), "data.mesh") {
		t.Errorf("malformed mesh config: %v; want an error naming configmap istio-system/istio and data.mesh", err)
	}
}
