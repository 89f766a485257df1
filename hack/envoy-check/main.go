// envoy-check reads an Envoy bootstrap configuration (YAML) on stdin and validates it
// against Envoy's own API definitions (github.com/envoyproxy/go-control-plane: the
// generated protobuf types and their protoc-gen-validate rules). hack/check-docs runs it
// on every `yaml` block of the docs marked as an Envoy configuration, so an Envoy example
// with a misspelt field, a wrong type or a missing required value fails the tests.
package main

import (
	"fmt"
	"io"
	"os"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	// Typed configs the examples use, registered so their Any values resolve.
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
	"sigs.k8s.io/yaml"
)

func main() {
	raw, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail("reading stdin: %v", err)
	}
	js, err := yaml.YAMLToJSON(raw)
	if err != nil {
		fail("not YAML: %v", err)
	}
	var b bootstrapv3.Bootstrap
	// DiscardUnknown stays false: an unknown field is an error, as it is for Envoy.
	if err := protojson.Unmarshal(js, &b); err != nil {
		fail("not an Envoy v3 Bootstrap: %v", err)
	}
	// protoc-gen-validate does not look inside google.protobuf.Any, and every filter's
	// configuration is an Any (typed_config): validate each one, at any depth, too.
	if err := validate(&b, "bootstrap"); err != nil {
		fail("invalid Envoy configuration: %v", err)
	}
	// Envoy also refuses a route or a JWKS fetch that names a cluster it does not define.
	defined := map[string]bool{}
	for _, c := range b.GetStaticResources().GetClusters() {
		defined[c.GetName()] = true
	}
	for _, ref := range clusterRefs {
		if !defined[ref.name] {
			fail("%s names cluster %q, which static_resources.clusters does not define", ref.where, ref.name)
		}
	}
	fmt.Printf("ok: %d listener(s), %d cluster(s)\n", len(b.GetStaticResources().GetListeners()), len(b.GetStaticResources().GetClusters()))
}

// clusterRefs collects, while validating, every cluster a route or an HttpUri names.
var clusterRefs []struct{ where, name string }

// validate runs m's own rules, then those of every typed config (Any) nested in it.
func validate(m proto.Message, where string) error {
	if v, ok := m.(interface{ ValidateAll() error }); ok {
		if err := v.ValidateAll(); err != nil {
			return fmt.Errorf("%s: %w", where, err)
		}
	}
	switch x := m.(type) {
	case *corev3.HttpUri:
		clusterRefs = append(clusterRefs, struct{ where, name string }{where, x.GetCluster()})
	case *routev3.RouteAction:
		if c := x.GetCluster(); c != "" {
			clusterRefs = append(clusterRefs, struct{ where, name string }{where, c})
		}
	}
	var err error
	m.ProtoReflect().Range(func(fd protoreflect.FieldDescriptor, val protoreflect.Value) bool {
		if fd.Kind() != protoreflect.MessageKind && fd.Kind() != protoreflect.GroupKind {
			return true
		}
		name := where + "." + string(fd.Name())
		switch {
		case fd.IsList():
			l := val.List()
			for i := 0; i < l.Len() && err == nil; i++ {
				err = visit(l.Get(i).Message().Interface(), fmt.Sprintf("%s[%d]", name, i))
			}
		case fd.IsMap():
			val.Map().Range(func(k protoreflect.MapKey, v protoreflect.Value) bool {
				if fd.MapValue().Kind() == protoreflect.MessageKind {
					err = visit(v.Message().Interface(), fmt.Sprintf("%s[%v]", name, k.Interface()))
				}
				return err == nil
			})
		default:
			err = visit(val.Message().Interface(), name)
		}
		return err == nil
	})
	return err
}

// visit unpacks an Any into its registered type before validating; other messages are
// validated as they are.
func visit(m proto.Message, where string) error {
	if a, ok := m.(*anypb.Any); ok {
		inner, err := a.UnmarshalNew()
		if err != nil {
			return fmt.Errorf("%s: %w", where, err)
		}
		return validate(inner, where+"<"+string(inner.ProtoReflect().Descriptor().FullName())+">")
	}
	return validate(m, where)
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "envoy-check: "+format+"\n", args...)
	os.Exit(1)
}
