package discovery

// DecodeManifestsSkipping exposes the decoder with its skip callback to the
// external tests (servedkinds_test.go), which need the Kubernetes harness
// and so cannot live in this package.
var DecodeManifestsSkipping = decodeManifests
