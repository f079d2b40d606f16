package mesh

import "path/filepath"

// ExampleClusters are the three clusters of examples/multicluster (dir is
// that directory): their names, networks and the locality of each one's
// east-west gateway, as its manifests describe them.
func ExampleClusters(dir string) []ClusterSpec {
	return []ClusterSpec{
		{Name: "cluster1", Network: "network1", Region: "us-east", Zone: "us-east-a", Manifests: filepath.Join(dir, "cluster1")},
		{Name: "cluster2", Network: "network2", Region: "us-east", Zone: "us-east-c", Manifests: filepath.Join(dir, "cluster2")},
		{Name: "cluster3", Network: "network3", Region: "eu-west", Zone: "eu-west-a", Manifests: filepath.Join(dir, "cluster3")},
	}
}
