package kubeyaml

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestMarshalLeavesOutWhatClientsNeverSet(t *testing.T) {
	ns := &corev1.Namespace{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Namespace"}, ObjectMeta: metav1.ObjectMeta{Name: "a"}}
	cm := &corev1.ConfigMap{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"},
		ObjectMeta: metav1.ObjectMeta{Name: "b", Namespace: "a"}, Data: map[string]string{"k": "v"}}
	got, err := Marshal(ns, cm)
	if err != nil {
		t.Fatal(err)
	}
	want := `apiVersion: v1
kind: Namespace
metadata:
  name: a
---
apiVersion: v1
data:
  k: v
kind: ConfigMap
metadata:
  name: b
  namespace: a
`
	if string(got) != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
}
