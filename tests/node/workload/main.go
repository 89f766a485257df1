// Command keyturn-e2e is the workload of keyturn's node tests (tests/node.rs), run as Pods on
// a real kubelet from an image whose only file is this static binary:
//
//	keyturn-e2e issuer     signs JWTs with the key the kubelet mounts from keyturn's Secret
//	                       ($KEYTURN_SIGNING_KEY, private.jwk.json): GET /token
//	keyturn-e2e verifier   verifies JWTs against the JWKS the kubelet mounts from keyturn's
//	                       ConfigMap ($KEYTURN_JWKS): POST /verify. It never fetches keys from
//	                       anywhere else, so a token whose kid is not in the mounted file fails.
//	keyturn-e2e fetch      GETs $KEYTURN_JWKS_URL (keyturn's JWKS through its Service): GET /fetch
//	keyturn-e2e cat PATH   prints a file (for `kubectl exec` in the demo: the image has no shell)
//
// The issuer and the verifier also watch their mounted file (every 20 ms) and serve what they
// saw, with the time they first saw it, at GET /observed: the test measures the kubelet's
// propagation delay from it. Everything listens on :8080.
package main

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// Observation is one content of the watched file, from the first time it was seen.
type Observation struct {
	AtMillis int64    `json:"at_ms"`
	SHA256   string   `json:"sha256"`
	Kids     []string `json:"kids"`
}

type watcher struct {
	path string
	mu   sync.Mutex
	seen []Observation
	last []byte
}

func kidsOf(b []byte) []string {
	var set jose.JSONWebKeySet
	if json.Unmarshal(b, &set) == nil && len(set.Keys) > 0 {
		kids := make([]string, 0, len(set.Keys))
		for _, k := range set.Keys {
			kids = append(kids, k.KeyID)
		}
		return kids
	}
	var one struct {
		Kid string `json:"kid"`
	}
	if json.Unmarshal(b, &one) == nil && one.Kid != "" {
		return []string{one.Kid}
	}
	return []string{}
}

func (w *watcher) poll() {
	b, err := os.ReadFile(w.path)
	if err != nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.last != nil && string(b) == string(w.last) {
		return
	}
	sum := sha256.Sum256(b)
	w.last = b
	w.seen = append(w.seen, Observation{time.Now().UnixMilli(), hex.EncodeToString(sum[:]), kidsOf(b)})
}

func (w *watcher) run() {
	for {
		w.poll()
		time.Sleep(20 * time.Millisecond)
	}
}

func (w *watcher) current() []byte {
	w.poll()
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.last
}

func (w *watcher) serve(rw http.ResponseWriter, _ *http.Request) {
	w.mu.Lock()
	b, _ := json.Marshal(w.seen)
	w.mu.Unlock()
	reply(rw, 200, b)
}

func reply(rw http.ResponseWriter, status int, b []byte) {
	rw.Header().Set("Content-Length", fmt.Sprint(len(b)))
	rw.WriteHeader(status)
	rw.Write(b)
}

func replyJSON(rw http.ResponseWriter, v any) {
	b, _ := json.Marshal(v)
	reply(rw, 200, b)
}

func env(name string) string {
	v := os.Getenv(name)
	if v == "" {
		fmt.Fprintf(os.Stderr, "keyturn-e2e: %s is not set\n", name)
		os.Exit(2)
	}
	return v
}

func issuer(mux *http.ServeMux) {
	w := &watcher{path: env("KEYTURN_SIGNING_KEY")}
	go w.run()
	mux.HandleFunc("/observed", w.serve)
	mux.HandleFunc("/token", func(rw http.ResponseWriter, _ *http.Request) {
		// One read: the key, its kid and alg come from the same file (docs/issuer.md).
		var key jose.JSONWebKey
		if err := key.UnmarshalJSON(w.current()); err != nil {
			replyJSON(rw, map[string]any{"error": "no key: " + err.Error()})
			return
		}
		signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.SignatureAlgorithm(key.Algorithm), Key: key},
			(&jose.SignerOptions{}).WithType("JWT"))
		if err != nil {
			replyJSON(rw, map[string]any{"error": err.Error()})
			return
		}
		now := time.Now()
		jti := make([]byte, 8)
		rand.Read(jti)
		claims := jwt.Claims{Issuer: "https://auth.example.com", Subject: "e2e", ID: hex.EncodeToString(jti),
			IssuedAt: jwt.NewNumericDate(now), Expiry: jwt.NewNumericDate(now.Add(10 * time.Minute))}
		tok, err := jwt.Signed(signer).Claims(claims).Serialize()
		if err != nil {
			replyJSON(rw, map[string]any{"error": err.Error()})
			return
		}
		replyJSON(rw, map[string]any{"token": tok, "kid": key.KeyID, "at_ms": now.UnixMilli()})
	})
}

var algs = []jose.SignatureAlgorithm{jose.RS256, jose.RS384, jose.RS512, jose.PS256, jose.PS384, jose.PS512,
	jose.ES256, jose.ES384, jose.ES512, jose.EdDSA}

func verifier(mux *http.ServeMux) {
	w := &watcher{path: env("KEYTURN_JWKS")}
	go w.run()
	mux.HandleFunc("/observed", w.serve)
	mux.HandleFunc("/verify", func(rw http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<16))
		fail := func(why string) { replyJSON(rw, map[string]any{"ok": false, "error": why}) }
		tok, err := jwt.ParseSigned(string(body), algs)
		if err != nil || len(tok.Headers) != 1 {
			fail(fmt.Sprintf("not a JWS: %v", err))
			return
		}
		var set jose.JSONWebKeySet
		if err := json.Unmarshal(w.current(), &set); err != nil {
			fail("no JWKS: " + err.Error())
			return
		}
		kid := tok.Headers[0].KeyID
		keys := set.Key(kid)
		if len(keys) != 1 {
			fail(fmt.Sprintf("kid %q is not in the mounted JWKS", kid))
			return
		}
		// The key's alg, never the token's.
		if keys[0].Algorithm != tok.Headers[0].Algorithm {
			fail(fmt.Sprintf("token alg %s, key alg %s", tok.Headers[0].Algorithm, keys[0].Algorithm))
			return
		}
		var claims jwt.Claims
		if err := tok.Claims(keys[0].Key, &claims); err != nil {
			fail("signature: " + err.Error())
			return
		}
		if err := claims.ValidateWithLeeway(jwt.Expected{Issuer: "https://auth.example.com", Time: time.Now()}, 0); err != nil {
			fail("claims: " + err.Error())
			return
		}
		replyJSON(rw, map[string]any{"ok": true, "kid": kid})
	})
}

func fetch(mux *http.ServeMux) {
	url := env("KEYTURN_JWKS_URL")
	client := &http.Client{Timeout: 5 * time.Second}
	mux.HandleFunc("/fetch", func(rw http.ResponseWriter, _ *http.Request) {
		resp, err := client.Get(url)
		if err != nil {
			reply(rw, 502, []byte(err.Error()))
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		rw.Header().Set("X-Upstream-Status", fmt.Sprint(resp.StatusCode))
		reply(rw, 200, b)
	})
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: keyturn-e2e issuer|verifier|fetch|cat PATH")
		os.Exit(2)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(rw http.ResponseWriter, _ *http.Request) { reply(rw, 200, []byte("ok")) })
	switch os.Args[1] {
	case "issuer":
		issuer(mux)
	case "verifier":
		verifier(mux)
	case "fetch":
		fetch(mux)
	case "cat":
		b, err := os.ReadFile(os.Args[2])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Stdout.Write(b)
		return
	default:
		fmt.Fprintln(os.Stderr, "unknown mode", os.Args[1])
		os.Exit(2)
	}
	srv := &http.Server{Addr: ":8080", Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	if err := srv.ListenAndServe(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
