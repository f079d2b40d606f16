// Package discovery owns every source of truth peerd reads and the one
// in-process Index they feed.
//
// Sources:
//   - the Kubernetes API through client-go informers (KubeSource, kube.go);
//   - a directory of Kubernetes manifests (FileSource, --config-dir), decoded
//     by DecodeManifests with the API server's defaults applied (defaults.go),
//     so a manifest means the same in a file as in a cluster.
//
// What it must never do: derive anything. Mapping objects to WDS resources is
// internal/ambient's job; discovery stores objects as the sources give them
// (plus, for files, what an API server would have set on create; the
// informers keep only the fields Strip keeps) and says that something changed. It never mutates an object after handing it to the
// Index, and callers must not mutate what Snapshot returns. The file source
// never invents what a cluster would allocate (cluster IPs, node ports): a
// non-headless Service without spec.clusterIP is an error. Where a cluster's
// configuration would decide (the default IP family) it assumes IPv4 first.
//
// Concurrency contract: Index is safe for concurrent use by any number of
// sources and readers. Every method takes one mutex for a short, bounded time
// and never blocks on a channel while holding it: Changed is a capacity-1,
// latest-wins signal sent without blocking. After each signal the one
// consumer (the model loop) calls TakeChanges, which returns every key whose
// object in force changed since its previous call, once, with the current
// object (nil when gone); one signal may stand for many changes. A FileSource does
// all its work in the goroutine that calls Run; it never waits on a timer:
// it drains the fsnotify events already queued, then reloads once.
//
// Invariants:
//   - Each kind in a Snapshot is sorted by namespace, then name.
//   - Changed fires only when the objects in force change: an update that is
//     deep-equal to what is held apart from bookkeeping (resourceVersion,
//     generation, managedFields), or, from a non-file source such as an
//     informer, has the same resourceVersion and uid, does not signal and is
//     not returned by TakeChanges.
//   - Every object has one origin in force: a source, and for the file source
//     a file. When two origins define the same object (kind, namespace,
//     name), the first one seen stays in force and Errors reports the
//     conflict naming both; when the first one goes away the next takes over.
//     Files are read in path order, so the first load is deterministic.
//   - A file is replaced as a whole: a file that fails to decode changes
//     nothing (its last good objects stay in force) and its error, naming
//     file, document (counted from 1, as a reader counts them), object and
//     field, is reported by Errors until a good version of the file, or its
//     deletion, clears it. A file seen empty keeps its objects (that is what
//     an in-place save looks like half way); deleting a file removes them.
//   - Dot-directories and dot-files below the config dir are never read (a
//     ConfigMap volume's `..data` and `..<timestamp>` would otherwise be read
//     twice); symlinked files are followed, symlinked directories below the
//     root are not.
//   - The config dir is followed as a path, not as the directory it named at
//     start: a symlinked root (or one below a symlink) is resolved on every
//     reload, and a root that is re-pointed (git-sync), swapped with mv,
//     deleted or recreated is seen through watches on the directories that
//     hold the symlinks and the root. Files keep their names below the
//     configured path, so a flip changes only the files whose bytes differ.
//     While the root is missing the last good state stays in force and
//     Errors names the missing path; a root deleted file by file is seen
//     file by file until it is gone.
//   - A manifest file is read only up to FileSourceOptions.MaxFileSize
//     (--max-file-size, 16 MiB by default): its size is checked before
//     reading and the read is bounded, and a file over the limit is refused
//     by name (Errors, a log line, peerd_config_file_problems_total) while
//     its last good objects stay.
//   - Which documents are read, skipped or refused (decode.go): a kind the
//     Index stores is read at every version the API server peerd stands in
//     for serves (Kubernetes 1.37, Gateway API v1.6: a Gateway at v1beta1 is
//     read as v1), and any other version of it is an error. A kind built
//     into Kubernetes or the Gateway API that peerd does not use (a
//     Deployment, a ConfigMap, an HTTPRoute) is skipped with a debug log. A
//     kind that looks like a typo is an error, so the file keeps its last
//     good objects and a typo never deletes a Service: a kind its group does
//     not have but that is at most two edits from one it has (`v1 Servce`),
//     a kind named as in another group (`apps/v1 Service`), or a group one
//     edit from a known one. Any other kind peerd does not know (a custom
//     resource, Istio's included; a kind newer than peerd) or a version
//     nobody serves is skipped with a warning naming the file, document,
//     apiVersion and kind. Skips
//     are counted in peerd_config_documents_skipped_total. Lists (`kind:
//     List`, `kind: ServiceList`) are read as kubectl reads them; a list
//     inside a list is an error, as for kubectl.
//   - Synced is false until at least one source registered and every
//     registered source called MarkSynced after its first full load.
package discovery
