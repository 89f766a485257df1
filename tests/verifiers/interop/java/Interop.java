// keyturn's interop matrix, Java stack: JCA (KeyFactory + PKCS8EncodedKeySpec) loads the keys,
// Nimbus JOSE+JWT signs and verifies (Ed25519 through Tink, as Nimbus requires).
//
//   java Interop sign   CASES OUT     load each case's private.pem, check it holds the key of
//                                     private.jwk.json, sign a token into OUT/<case>.jwt
//   java Interop verify CASES TOKENS  verify every TOKENS/<signer>/<case>.jwt against
//                                     CASES/<case>/jwks.json (ImmutableJWKSet: no refetch), the
//                                     algorithm pinned to CASES/<case>/alg
//
// Prints one JSON object per line: {check, case, signer?, ok, error?}. See tests/interop.rs.

import com.google.crypto.tink.subtle.Ed25519Sign;
import com.nimbusds.jose.JOSEObjectType;
import com.nimbusds.jose.JWSAlgorithm;
import com.nimbusds.jose.JWSHeader;
import com.nimbusds.jose.JWSSigner;
import com.nimbusds.jose.crypto.ECDSASigner;
import com.nimbusds.jose.crypto.Ed25519Signer;
import com.nimbusds.jose.crypto.Ed25519Verifier;
import com.nimbusds.jose.crypto.RSASSASigner;
import com.nimbusds.jose.jwk.Curve;
import com.nimbusds.jose.jwk.ECKey;
import com.nimbusds.jose.jwk.JWK;
import com.nimbusds.jose.jwk.JWKSet;
import com.nimbusds.jose.jwk.OctetKeyPair;
import com.nimbusds.jose.jwk.RSAKey;
import com.nimbusds.jose.jwk.source.ImmutableJWKSet;
import com.nimbusds.jose.proc.JWSVerificationKeySelector;
import com.nimbusds.jose.proc.SecurityContext;
import com.nimbusds.jose.util.Base64URL;
import com.nimbusds.jose.util.JSONObjectUtils;
import com.nimbusds.jwt.JWTClaimsSet;
import com.nimbusds.jwt.SignedJWT;
import com.nimbusds.jwt.proc.DefaultJWTClaimsVerifier;
import com.nimbusds.jwt.proc.DefaultJWTProcessor;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.KeyFactory;
import java.security.PrivateKey;
import java.security.interfaces.ECPrivateKey;
import java.security.interfaces.EdECPrivateKey;
import java.security.interfaces.RSAPrivateKey;
import java.security.spec.PKCS8EncodedKeySpec;
import java.util.Arrays;
import java.util.Base64;
import java.util.Date;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.stream.Stream;

public class Interop {
  static String read(Path dir, String name) throws Exception {
    return Files.readString(dir.resolve(name)).trim();
  }

  static List<Path> list(Path dir) throws Exception {
    try (Stream<Path> s = Files.list(dir)) {
      return s.sorted().toList();
    }
  }

  static void report(String check, String c, String signer, Exception e) {
    Map<String, Object> o = new LinkedHashMap<>();
    o.put("check", check);
    o.put("case", c);
    if (signer != null) o.put("signer", signer);
    o.put("ok", e == null);
    if (e != null) o.put("error", e.getClass().getSimpleName() + ": " + e.getMessage());
    System.out.println(JSONObjectUtils.toJSONString(o));
  }

  /** The PEM's PKCS#8 body through JCA, checked against private.jwk.json; returns a signer. */
  static JWSSigner load(Path d) throws Exception {
    String alg = read(d, "alg");
    // The PEM's body: every line but the armor lines (which start with five dashes).
    String body = read(d, "private.pem").lines()
        .filter(l -> !l.startsWith("-----"))
        .collect(java.util.stream.Collectors.joining());
    PKCS8EncodedKeySpec spec = new PKCS8EncodedKeySpec(Base64.getDecoder().decode(body));
    String family = alg.startsWith("RS") || alg.startsWith("PS") ? "RSA" : alg.startsWith("ES") ? "EC" : "Ed25519";
    PrivateKey key = KeyFactory.getInstance(family).generatePrivate(spec);
    JWK jwk = JWK.parse(read(d, "private.jwk.json"));
    String kid = read(d, "kid");
    boolean same;
    JWSSigner signer;
    if (key instanceof RSAPrivateKey rsa) {
      RSAPrivateKey other = jwk.toRSAKey().toRSAPrivateKey();
      same = rsa.getModulus().equals(other.getModulus())
          && rsa.getPrivateExponent().equals(other.getPrivateExponent());
      signer = new RSASSASigner(rsa);
    } else if (key instanceof ECPrivateKey ec) {
      ECKey other = jwk.toECKey();
      same = ec.getS().equals(other.toECPrivateKey().getS())
          && Curve.forECParameterSpec(ec.getParams()).equals(other.getCurve());
      signer = new ECDSASigner(ec);
    } else if (key instanceof EdECPrivateKey ed) {
      byte[] seed = ed.getBytes().orElseThrow();
      same = Arrays.equals(seed, jwk.toOctetKeyPair().getDecodedD());
      byte[] x = Ed25519Sign.KeyPair.newKeyPairFromSeed(seed).getPublicKey();
      signer = new Ed25519Signer(new OctetKeyPair.Builder(Curve.Ed25519, Base64URL.encode(x))
          .d(Base64URL.encode(seed)).keyID(kid).build());
    } else {
      throw new IllegalArgumentException("unexpected key type " + key.getAlgorithm());
    }
    if (!same) throw new IllegalStateException("private.pem and private.jwk.json hold different keys");
    return signer;
  }

  static void sign(Path cases, Path out) throws Exception {
    for (Path d : list(cases)) {
      String c = d.getFileName().toString();
      JWSSigner signer;
      try {
        signer = load(d);
        report("load", c, null, null);
      } catch (Exception e) {
        report("load", c, null, e);
        continue;
      }
      try {
        long now = System.currentTimeMillis() / 1000 * 1000;
        JWTClaimsSet claims = new JWTClaimsSet.Builder()
            .issuer("keyturn-interop").subject(c)
            .issueTime(new Date(now)).expirationTime(new Date(now + 600_000))
            .build();
        JWSHeader header = new JWSHeader.Builder(JWSAlgorithm.parse(read(d, "alg")))
            .type(JOSEObjectType.JWT).keyID(read(d, "kid")).build();
        SignedJWT jwt = new SignedJWT(header, claims);
        jwt.sign(signer);
        Files.writeString(out.resolve(c + ".jwt"), jwt.serialize());
        report("sign", c, null, null);
      } catch (Exception e) {
        report("sign", c, null, e);
      }
    }
  }

  /**
   * EdDSA the way Nimbus documents it: the key chosen by kid, {@link Ed25519Verifier}.
   * DefaultJWTProcessor's JWSVerificationKeySelector finds no key for an EdDSA token (it
   * selects JCA keys, and an OKP JWK has none); docs/interop.md says so to Java verifiers.
   */
  static void verifyEd25519(String token, JWKSet keys, DefaultJWTClaimsVerifier<SecurityContext> claims)
      throws Exception {
    SignedJWT jwt = SignedJWT.parse(token);
    if (!JWSAlgorithm.EdDSA.equals(jwt.getHeader().getAlgorithm())) {
      throw new IllegalArgumentException("alg " + jwt.getHeader().getAlgorithm() + " is not EdDSA");
    }
    JWK jwk = keys.getKeyByKeyId(jwt.getHeader().getKeyID());
    if (!(jwk instanceof OctetKeyPair okp)) {
      throw new IllegalArgumentException("kid " + jwt.getHeader().getKeyID() + " is not an OKP key of the JWKS");
    }
    if (!jwt.verify(new Ed25519Verifier(okp))) {
      throw new SecurityException("signature does not verify");
    }
    claims.verify(jwt.getJWTClaimsSet(), null);
  }

  static void verify(Path cases, Path tokens) throws Exception {
    for (Path signerDir : list(tokens)) {
      String signer = signerDir.getFileName().toString();
      for (Path file : list(signerDir)) {
        String c = file.getFileName().toString().replaceAll("\\.jwt$", "");
        Path d = cases.resolve(c);
        try {
          JWSAlgorithm alg = JWSAlgorithm.parse(read(d, "alg"));
          JWKSet keys = JWKSet.parse(read(d, "jwks.json"));
          DefaultJWTClaimsVerifier<SecurityContext> claims = new DefaultJWTClaimsVerifier<>(
              new JWTClaimsSet.Builder().issuer("keyturn-interop").subject(c).build(),
              Set.of("exp"));
          String token = Files.readString(file).trim();
          if (alg.equals(JWSAlgorithm.EdDSA)) {
            verifyEd25519(token, keys, claims);
          } else {
            DefaultJWTProcessor<SecurityContext> p = new DefaultJWTProcessor<>();
            p.setJWSKeySelector(new JWSVerificationKeySelector<>(alg, new ImmutableJWKSet<>(keys)));
            p.setJWTClaimsSetVerifier(claims);
            p.process(token, null);
          }
          report("verify", c, signer, null);
        } catch (Exception e) {
          report("verify", c, signer, e);
        }
      }
    }
  }

  public static void main(String[] args) throws Exception {
    if (args.length != 3) {
      System.err.println("usage: Interop sign|verify CASES DIR");
      System.exit(2);
    }
    switch (args[0]) {
      case "sign" -> sign(Path.of(args[1]), Path.of(args[2]));
      case "verify" -> verify(Path.of(args[1]), Path.of(args[2]));
      default -> {
        System.err.println("usage: Interop sign|verify CASES DIR");
        System.exit(2);
      }
    }
  }
}
