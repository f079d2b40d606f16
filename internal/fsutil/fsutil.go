// Package fsutil holds the file-system steps peerd's state stores share.
package fsutil

import "os"

// SyncDir flushes a directory's entries, so that a file renamed into it
// survives a power loss: fsync of the file alone does not cover the rename.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
