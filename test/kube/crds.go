package kubeharness

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"sort"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

const gatewayAPIModule = "sigs.k8s.io/gateway-api"

// gatewayAPIFallbackVersion is used only when the test binary carries no
// module information; keep it equal to go.mod.
const gatewayAPIFallbackVersion = "v1.6.3"

var crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// GatewayAPIVersion is the gateway-api module version this binary was built
// with, so the CRDs installed always match the Go types peerd decodes.
func GatewayAPIVersion() string {
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, dep := range info.Deps {
			if dep.Path == gatewayAPIModule {
				if dep.Replace != nil {
					return dep.Replace.Version
				}
				return dep.Version
			}
		}
	}
	return gatewayAPIFallbackVersion
}

// InstallGatewayCRDs creates the standard-channel Gateway API CRDs from the
// gateway-api module and waits until the API server serves gateways.
func (c *Cluster) InstallGatewayCRDs(ctx context.Context) error {
	version := GatewayAPIVersion()
	dir, err := goModDownload(ctx, gatewayAPIModule, version)
	if err != nil {
		return err
	}
	files, err := filepath.Glob(filepath.Join(dir, "config", "crd", "standard", "*.yaml"))
	if err != nil {
		return err
	}
	if len(files) == 0 {
		return fmt.Errorf("%s@%s: no config/crd/standard/*.yaml", gatewayAPIModule, version)
	}
	sort.Strings(files)
	var names []string
	for _, file := range files {
		crds, err := readCRDs(file)
		if err != nil {
			return err
		}
		for _, crd := range crds {
			_, err := c.Dynamic.Resource(crdGVR).Create(ctx, crd, metav1.CreateOptions{})
			if err != nil && !apierrors.IsAlreadyExists(err) {
				return fmt.Errorf("%s: create customresourcedefinition %s: %w", file, crd.GetName(), err)
			}
			names = append(names, crd.GetName())
		}
	}
	for _, name := range names {
		if err := c.waitCRDEstablished(ctx, name); err != nil {
			return err
		}
	}
	return c.waitServed(ctx, "gateway.networking.k8s.io/v1", "gateways")
}

func readCRDs(file string) ([]*unstructured.Unstructured, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	reader := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var out []*unstructured.Unstructured
	for i := 0; ; i++ {
		doc, err := reader.Read()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("%s: document %d: %w", file, i, err)
		}
		obj := map[string]any{}
		if err := yaml.Unmarshal(doc, &obj); err != nil {
			return nil, fmt.Errorf("%s: document %d: %w", file, i, err)
		}
		if len(obj) == 0 {
			continue
		}
		u := &unstructured.Unstructured{Object: obj}
		if u.GetKind() != "CustomResourceDefinition" {
			continue
		}
		out = append(out, u)
	}
}

func (c *Cluster) waitCRDEstablished(ctx context.Context, name string) error {
	return poll(ctx, fmt.Sprintf("customresourcedefinition %s: status.conditions Established", name), func(ctx context.Context) (bool, error) {
		u, err := c.Dynamic.Resource(crdGVR).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
		for _, cond := range conds {
			m, _ := cond.(map[string]any)
			if m["type"] == "Established" && m["status"] == "True" {
				return true, nil
			}
		}
		return false, nil
	})
}

// waitServed waits until discovery lists resource in groupVersion: that is
// what informers and peerd's own CRD detection look at.
func (c *Cluster) waitServed(ctx context.Context, groupVersion, resource string) error {
	return poll(ctx, fmt.Sprintf("discovery of %s %s", groupVersion, resource), func(context.Context) (bool, error) {
		list, err := c.Kube.Discovery().ServerResourcesForGroupVersion(groupVersion)
		if err != nil {
			if apierrors.IsNotFound(err) {
				return false, nil
			}
			return false, err
		}
		for _, r := range list.APIResources {
			if r.Name == resource {
				return true, nil
			}
		}
		return false, nil
	})
}

// poll retries cond until it reports done, bounded by startTimeout. It is for
// conditions inside the API server that no watch announces (discovery), or
// where a watch would cost more code than it saves.
func poll(ctx context.Context, what string, cond func(context.Context) (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	ticker := time.NewTicker(50 * time.Millisecond)
	defer ticker.Stop()
	var last error
	for {
		done, err := cond(ctx)
		if done {
			return nil
		}
		last = err
		select {
		case <-ctx.Done():
			if last != nil {
				return fmt.Errorf("waiting for %s: %w (last error: %v)", what, ctx.Err(), last)
			}
			return fmt.Errorf("waiting for %s: %w", what, ctx.Err())
		case <-ticker.C:
		}
	}
}
