package clusterops

import (
	"bytes"
	"fmt"

	"sigs.k8s.io/yaml"
)

// ManifestYAML is objs as a YAML stream for `kubectl apply -f -`: the
// fields a client never sets (an empty status, a null creationTimestamp)
// are left out so the manifest reads as written by hand.
func ManifestYAML(objs ...any) ([]byte, error) {
	var out bytes.Buffer
	for i, o := range objs {
		b, err := yaml.Marshal(o)
		if err != nil {
			return nil, err
		}
		var m map[string]any
		if err := yaml.Unmarshal(b, &m); err != nil {
			return nil, err
		}
		if st, ok := m["status"].(map[string]any); ok && len(st) == 0 {
			delete(m, "status")
		}
		if md, ok := m["metadata"].(map[string]any); ok {
			if v, has := md["creationTimestamp"]; has && v == nil {
				delete(md, "creationTimestamp")
			}
		}
		if b, err = yaml.Marshal(m); err != nil {
			return nil, err
		}
		if i > 0 {
			out.WriteString("---\n")
		}
		fmt.Fprintf(&out, "%s", b)
	}
	return out.Bytes(), nil
}
