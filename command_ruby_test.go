//go:build fullsuite

package rereadyverify

// With the fullsuite tag (make test), the CLI's signatures are also checked
// against Ruby's OpenSSL::HMAC, the vendor documentation's own example;
// `go test ./...` alone checks them against openssl and Python.
func init() {
	cmdSigners = append(cmdSigners, cmdSigner{"ruby", func(key string) []string {
		return []string{"ruby", "--disable-gems", "-ropenssl", "-e",
			`print OpenSSL::HMAC.hexdigest("SHA512", ARGV[0], $stdin.binmode.read)`, key}
	}})
}
