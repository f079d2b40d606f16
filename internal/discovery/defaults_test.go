package discovery

import (
	"errors"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// TestDecodeMirrorPodServiceAccount: the ServiceAccount admission plugin
// skips mirror pods, so a static pod keeps no service account (istiod then
// sends none), and it refuses a mirror pod that names one.
func TestDecodeMirrorPodServiceAccount(t *testing.T) {
	const mirror = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: etcd-node1\n  namespace: kube-system\n" +
		"  annotations: {kubernetes.io/config.mirror: 9f3c2b1a}\n"
	t.Run("no account stays none", func(t *testing.T) {
		p := decodeOne[*corev1.Pod](t, mirror+"spec: {nodeName: node1, containers: [{name: etcd}]}\n")
		if p.Spec.ServiceAccountName != "" || p.Spec.DeprecatedServiceAccount != "" {
			t.Errorf("mirror pod got service account %q (deprecated alias %q), want none",
				p.Spec.ServiceAccountName, p.Spec.DeprecatedServiceAccount)
		}
	})
	t.Run("an ordinary pod still gets default", func(t *testing.T) {
		p := decodeOne[*corev1.Pod](t, "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: kube-system}\nspec: {containers: [{name: c}]}\n")
		if p.Spec.ServiceAccountName != "default" {
			t.Errorf("serviceAccountName = %q, want default", p.Spec.ServiceAccountName)
		}
	})
	for _, field := range []string{"serviceAccountName", "serviceAccount"} {
		t.Run(field+" refused", func(t *testing.T) {
			_, err := DecodeManifests("static.yaml", []byte(mirror+"spec: {"+field+": etcd, containers: [{name: etcd}]}\n"))
			want := `static.yaml: document 1: pod kube-system/etcd-node1: spec.serviceAccountName: invalid value "etcd": ` +
				`a mirror pod (annotation kubernetes.io/config.mirror) may not reference a service account`
			if err == nil || err.Error() != want {
				t.Fatalf("error:\n got %v\nwant %s", err, want)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error does not wrap ErrInvalid")
			}
		})
	}
	t.Run("an empty annotation value still marks a mirror pod", func(t *testing.T) {
		p := decodeOne[*corev1.Pod](t, strings.Replace(mirror, "9f3c2b1a", `""`, 1)+"spec: {containers: [{name: etcd}]}\n")
		if p.Spec.ServiceAccountName != "" {
			t.Errorf("serviceAccountName = %q, want none", p.Spec.ServiceAccountName)
		}
	})
}
