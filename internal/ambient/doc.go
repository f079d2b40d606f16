// Package ambient is peerd's model: it maps one cluster's Kubernetes objects
// (Namespaces, Nodes, Pods, Services, EndpointSlices) to the istio.workload
// Address resources that ztunnel consumes, the way istiod's ambient index
// (pilot/pkg/serviceregistry/ambient) maps them; and it merges that cluster
// with the services linked clusters export (ImportedServices, over the
// istio-remote Gateways that link them) into one mesh.
//
// What it owns
//   - Pod -> Workload (podWorkload), EndpointSlice endpoints that are not
//     Pods -> Workloads (endpointSliceWorkloads), Service -> Service
//     (serviceResource), and the traffic-distribution table (loadBalancing).
//   - Peering (design.md's state table and "How remote endpoints reach
//     ztunnel"): the solo.io/service-scope rules (serviceScope), what a
//     global Service exports (exportService), the global service
//     "<name>.<ns>.<global suffix>" (globalService), one split-horizon
//     workload per (linked cluster, service) (splitHorizonWorkload), the
//     gateway workloads of each link (linkGatewayAddresses), and the VIPs of
//     global services (vipAllocator).
//   - Extension mode (amend.go, docs/extension-mode.md): which outputs are
//     the mesh's additions (IsMeshAddition), what the mesh amends in a local
//     source's resources (AmendAddress), and the Merger that lays the model's
//     mesh over istiod's relayed resources.
//   - The resource names ztunnel relies on (names.go): a Workload is named by
//     its uid, a Service by "namespace/hostname"; peerd's own synthetic
//     workloads are named "<local cluster>/peerd/<kind>/..." so they can
//     never collide with istiod's.
//
// What it must never do
//   - No I/O, no goroutines, no logging, no clock, no randomness. Problems
//     are returned as Warnings naming the object and the field; logging,
//     metrics and Kubernetes Events are the caller's job.
//   - Never mutate its inputs: the objects are shared with the discovery
//     index.
//
// Concurrency contract
//
//	Model is the incremental form: it holds the objects and the resources
//	mapped from them, and Apply recomputes only what the changed objects
//	touch (the dependency table is on Model). It is not safe for concurrent
//	use; one goroutine (the model loop) owns it. Build is Model fed every
//	object at once: a pure function of (Config, Inputs), callable from any
//	number of goroutines. The per-object functions (podWorkload,
//	serviceResource, endpointSliceWorkloads) only read the model's index,
//	so a full Build and any sequence of Applys give the same resources
//	byte for byte; TestModelRandomChangesMatchBuild holds that.
//
// Invariants
//   - Same inputs, same output, byte for byte: addresses are sorted by
//     ResourceName, warnings are sorted and de-duplicated, every repeated
//     field has a defined order (the order istiod uses where it has one).
//     VIPs are the one piece of history: the same inputs and the same
//     Config.VIPs seed give the same VIPs.
//   - Names are stable: a resource keeps its name for as long as the object
//     it stands for exists (a split-horizon workload is named by cluster and
//     service, not by gateway address).
//   - A VIP never moves while its global service exists: a newcomer whose
//     hash lands on a taken address probes on, and Config.VIPs carries the
//     allocations across restarts. It is freed when the global service goes.
//   - Nothing local leaves the cluster unless its Service or namespace says
//     global or global-only; an import whose cluster has no link in force
//     contributes nothing.
//   - Field choices follow istiod wherever istiod has an opinion, so a
//     differential test against Istio's own index can compare whole
//     resources. The only deliberate extension is the traffic-distribution
//     values istiod does not know (PreferNetwork, PreferRegion, Any), which
//     follow peerd's design table.
package ambient
