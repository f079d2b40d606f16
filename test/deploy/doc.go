// Package deploy tests the Helm chart in deploy/peerd: what it renders is
// accepted by a real kube-apiserver (server-side dry-run), its Deployment
// passes `peerd serve` only flags that peerd has, its RBAC grants what
// peerd's client-go calls need and no more, and its values schema refuses
// misspelt keys.
//
// The tests need helm (`make tools`) and the kube harness binaries
// (hack/kube-tools.sh). Without them they skip on a developer machine and
// fail in CI, where PEERD_E2E_TOOLS_REQUIRED and PEERD_KUBE_REQUIRED are set.
package deploy
