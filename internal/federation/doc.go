// Package federation is the Go side of peerd's federation contract
// (proto/peerd/federation/v1): the type URL and resource names, the checks
// every received FederatedService must pass, and ImportedService, the form in
// which a service exported by a linked cluster enters the discovery index
// and the model.
//
// It owns no state and does no I/O. The exporter (internal/ambient) and the
// importer (the peer links in internal/discovery) both use it, so what one
// side sends is what the other side accepts.
package federation
