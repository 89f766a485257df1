// keyturn's interop matrix, Go stack: crypto/x509 loads the keys, go-jose signs and verifies.
//
//	interop sign   CASES OUT     load each case's private.pem (x509.ParsePKCS8PrivateKey),
//	                             check it holds the key of private.jwk.json, sign OUT/<case>.jwt
//	interop verify CASES TOKENS  verify every TOKENS/<signer>/<case>.jwt against
//	                             CASES/<case>/jwks.json (local: no refetch), the algorithm
//	                             pinned to CASES/<case>/alg
//
// Prints one JSON object per line: {check, case, signer?, ok, error?}. See tests/interop.rs.
package main

import (
	"crypto"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

type result struct {
	Check  string `json:"check"`
	Case   string `json:"case"`
	Signer string `json:"signer,omitempty"`
	OK     bool   `json:"ok"`
	Error  string `json:"error,omitempty"`
}

func report(r result, err error) {
	r.OK = err == nil
	if err != nil {
		r.Error = err.Error()
	}
	b, _ := json.Marshal(r)
	fmt.Println(string(b))
}

func read(dir, name string) (string, error) {
	b, err := os.ReadFile(filepath.Join(dir, name))
	return strings.TrimSpace(string(b)), err
}

func names(dir string) []string {
	entries, err := os.ReadDir(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	sort.Strings(out)
	return out
}

type publicKey interface{ Equal(crypto.PublicKey) bool }

func load(d string) (crypto.Signer, error) {
	p, err := read(d, "private.pem")
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode([]byte(p))
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, errors.New("private.pem: no PRIVATE KEY block")
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, err
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("private.pem: %T is not a signing key", k)
	}
	j, err := read(d, "private.jwk.json")
	if err != nil {
		return nil, err
	}
	var jwk jose.JSONWebKey
	if err := jwk.UnmarshalJSON([]byte(j)); err != nil {
		return nil, fmt.Errorf("private.jwk.json: %w", err)
	}
	other, ok := jwk.Key.(crypto.Signer)
	if !ok || jwk.IsPublic() {
		return nil, errors.New("private.jwk.json: not a private key")
	}
	if !signer.Public().(publicKey).Equal(other.Public()) {
		return nil, errors.New("private.pem and private.jwk.json hold different keys")
	}
	return signer, nil
}

func sign(cases, out string) {
	for _, c := range names(cases) {
		d := filepath.Join(cases, c)
		key, err := load(d)
		report(result{Check: "load", Case: c}, err)
		if err != nil {
			continue
		}
		report(result{Check: "sign", Case: c}, func() error {
			alg, _ := read(d, "alg")
			kid, _ := read(d, "kid")
			s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.SignatureAlgorithm(alg), Key: key},
				(&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", kid))
			if err != nil {
				return err
			}
			now := time.Now()
			token, err := jwt.Signed(s).Claims(jwt.Claims{
				Issuer: "keyturn-interop", Subject: c,
				IssuedAt: jwt.NewNumericDate(now), Expiry: jwt.NewNumericDate(now.Add(10 * time.Minute)),
			}).Serialize()
			if err != nil {
				return err
			}
			return os.WriteFile(filepath.Join(out, c+".jwt"), []byte(token), 0o600)
		}())
	}
}

func verifyOne(d, tokenFile, c string) error {
	alg, err := read(d, "alg")
	if err != nil {
		return err
	}
	raw, err := os.ReadFile(tokenFile)
	if err != nil {
		return err
	}
	tok, err := jwt.ParseSigned(strings.TrimSpace(string(raw)), []jose.SignatureAlgorithm{jose.SignatureAlgorithm(alg)})
	if err != nil {
		return err
	}
	j, err := read(d, "jwks.json")
	if err != nil {
		return err
	}
	var set jose.JSONWebKeySet
	if err := json.Unmarshal([]byte(j), &set); err != nil {
		return fmt.Errorf("jwks.json: %w", err)
	}
	kid := tok.Headers[0].KeyID
	keys := set.Key(kid)
	if len(keys) == 0 {
		return fmt.Errorf("kid %q is not in the JWKS", kid)
	}
	var claims jwt.Claims
	if err := tok.Claims(keys[0], &claims); err != nil {
		return err
	}
	if claims.Expiry == nil {
		return errors.New("no exp claim")
	}
	return claims.ValidateWithLeeway(jwt.Expected{Issuer: "keyturn-interop", Subject: c, Time: time.Now()}, 0)
}

func verify(cases, tokens string) {
	for _, signer := range names(tokens) {
		for _, name := range names(filepath.Join(tokens, signer)) {
			c := strings.TrimSuffix(name, ".jwt")
			err := verifyOne(filepath.Join(cases, c), filepath.Join(tokens, signer, name), c)
			report(result{Check: "verify", Case: c, Signer: signer}, err)
		}
	}
}

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: interop sign|verify CASES DIR")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "sign":
		sign(os.Args[2], os.Args[3])
	case "verify":
		verify(os.Args[2], os.Args[3])
	default:
		fmt.Fprintln(os.Stderr, "usage: interop sign|verify CASES DIR")
		os.Exit(2)
	}
}
