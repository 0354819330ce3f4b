//go:build !linux

package rereadyverify

import "github.com/caddyserver/certmagic"

// dirProbe is linux only (fstatat); elsewhere the storage is asked.
type dirProbe struct{}

func newDirProbe(*certmagic.FileStorage, string) *dirProbe { return nil }

func (*dirProbe) exists(string) (found, ok bool, err error) { return false, false, nil }

func (*dirProbe) empty() (empty, ok bool) { return false, false }

// fileID is linux only.
type fileID struct{}

func (*dirProbe) identity(string) (id fileID, found, ok bool, err error) {
	return id, false, false, nil
}
