// Kubeconfig parsing (certificates, tokens, CA inline and as files, contexts and namespaces)
// and the in-cluster service account, including the token's rotation.

#include "backends/kubernetes/kube_config.h"

#include <fstream>
#include <thread>

#include <gtest/gtest.h>

#include "tests/test_support.h"

namespace poolworker::backends::kubernetes {
namespace {

namespace fs = std::filesystem;

void write(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

// "-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n" in base64.
constexpr char kCaPem[] = "-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n";
constexpr char kCaBase64[] =
    "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCkNBCi0tLS0tRU5EIENFUlRJRklDQVRFLS0tLS0K";

TEST(Base64Test, DecodesWithAndWithoutPadding) {
  EXPECT_EQ(base64Decode("aGVsbG8="), "hello");
  EXPECT_EQ(base64Decode("aGVsbG8"), "hello");
  EXPECT_EQ(base64Decode(kCaBase64), kCaPem);
  EXPECT_FALSE(base64Decode("not base64!").has_value());
}

TEST(KubeconfigTest, TokenUserInlineCaAndContextNamespace) {
  const std::string text = std::string(R"(apiVersion: v1
kind: Config
current-context: prod
clusters:
- name: prod-cluster
  cluster:
    server: https://10.1.2.3:6443
    certificate-authority-data: )") +
                           kCaBase64 + R"(
users:
- name: robot
  user:
    token: s3cret
contexts:
- name: prod
  context:
    cluster: prod-cluster
    user: robot
    namespace: flows
- name: other
  context:
    cluster: prod-cluster
    user: robot
)";
  auto connection = parseKubeconfig(text, "", "", "test kubeconfig");
  ASSERT_TRUE(connection.ok()) << connection.error().message;
  EXPECT_EQ(connection->server, "https://10.1.2.3:6443");
  EXPECT_TRUE(connection->tls.enabled);
  EXPECT_TRUE(connection->tls.verify);
  EXPECT_EQ(connection->tls.ca_pem, kCaPem);
  EXPECT_EQ(connection->token.get().valueOr(""), "s3cret");
  EXPECT_EQ(connection->context_namespace, "flows");
  EXPECT_EQ(connection->key.find("s3cret"), std::string::npos) << "the key holds no secret";

  auto other = parseKubeconfig(text, "other", "", "test kubeconfig");
  ASSERT_TRUE(other.ok());
  EXPECT_EQ(other->context_namespace, "");
  EXPECT_NE(other->source.find("context other"), std::string::npos);

  auto missing = parseKubeconfig(text, "nope", "", "test kubeconfig");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.error().message.find("no context named 'nope'"), std::string::npos);
}

TEST(KubeconfigTest, ClientCertificateFilesRelativeToTheKubeconfigAndInsecureSkip) {
  testing::TempDir dir;
  write(dir.path() / "ca.crt", kCaPem);
  write(dir.path() / "client.crt", "CERT");
  write(dir.path() / "client.key", "KEY");
  const std::string text = R"(
current-context: dev
clusters:
- name: dev
  cluster:
    server: https://dev.example:443
    certificate-authority: ca.crt
    insecure-skip-tls-verify: true
users:
- name: me
  user:
    client-certificate: client.crt
    client-key: client.key
contexts:
- name: dev
  context: {cluster: dev, user: me}
)";
  write(dir.path() / "config", text);
  auto connection = loadKubeconfigFiles((dir.path() / "config").string(), "", "");
  ASSERT_TRUE(connection.ok()) << connection.error().message;
  EXPECT_FALSE(connection->tls.verify);
  EXPECT_EQ(connection->tls.ca_pem, kCaPem);
  EXPECT_EQ(connection->tls.cert_pem, "CERT");
  EXPECT_EQ(connection->tls.key_pem, "KEY");
  EXPECT_FALSE(connection->token.present());
}

TEST(KubeconfigTest, InlineClientCertificateDataAndTokenFile) {
  testing::TempDir dir;
  write(dir.path() / "token", "from-file\n");
  const std::string text = R"(
current-context: c
clusters: [{name: c, cluster: {server: "http://127.0.0.1:8080"}}]
users:
- name: u
  user:
    client-certificate-data: Q0VSVA==
    client-key-data: S0VZ
    tokenFile: token
contexts: [{name: c, context: {cluster: c, user: u, namespace: ns1}}]
)";
  auto connection = parseKubeconfig(text, "", dir.path(), "inline");
  ASSERT_TRUE(connection.ok()) << connection.error().message;
  EXPECT_FALSE(connection->tls.enabled);
  EXPECT_EQ(connection->tls.cert_pem, "CERT");
  EXPECT_EQ(connection->tls.key_pem, "KEY");
  EXPECT_EQ(connection->token.get().valueOr(""), "from-file");
}

TEST(KubeconfigTest, MergedKubeconfigFilesFirstWins) {
  testing::TempDir dir;
  write(dir.path() / "a", R"(
current-context: a
contexts: [{name: a, context: {cluster: shared, user: ua}}]
users: [{name: ua, user: {token: ta}}]
)");
  write(dir.path() / "b", R"(
current-context: b
clusters: [{name: shared, cluster: {server: "https://b.example"}}]
contexts: [{name: a, context: {cluster: none, user: none}}]
)");
  auto connection =
      loadKubeconfigFiles((dir.path() / "a").string() + ":" + (dir.path() / "missing").string() +
                              ":" + (dir.path() / "b").string(),
                          "", "");
  ASSERT_TRUE(connection.ok()) << connection.error().message;
  EXPECT_EQ(connection->server, "https://b.example");
  EXPECT_EQ(connection->token.get().valueOr(""), "ta");
}

TEST(KubeconfigTest, BadEntriesAreNamed) {
  auto exec = parseKubeconfig(R"(
current-context: c
clusters: [{name: c, cluster: {server: "https://x"}}]
users: [{name: u, user: {exec: {command: aws}}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
)",
                              "", "", "k");
  ASSERT_FALSE(exec.ok());
  EXPECT_NE(exec.error().message.find("exec credential plugin"), std::string::npos);

  auto no_cluster = parseKubeconfig(R"(
current-context: c
contexts: [{name: c, context: {cluster: gone, user: u}}]
)",
                                    "", "", "k");
  ASSERT_FALSE(no_cluster.ok());
  EXPECT_NE(no_cluster.error().message.find("cluster 'gone'"), std::string::npos);

  auto broken = parseKubeconfig("clusters: [", "", "", "k");
  ASSERT_FALSE(broken.ok());
  EXPECT_NE(broken.error().message.find("not valid YAML"), std::string::npos);

  auto bad_data = parseKubeconfig(R"(
current-context: c
clusters: [{name: c, cluster: {server: "https://x", certificate-authority-data: "!!"}}]
contexts: [{name: c, context: {cluster: c}}]
)",
                                  "", "", "k");
  ASSERT_FALSE(bad_data.ok());
  EXPECT_NE(bad_data.error().message.find("certificate-authority-data is not valid base64"),
            std::string::npos);
}

TEST(InClusterTest, ServiceAccountFolderAndTokenRotation) {
  testing::TempDir dir;
  write(dir.path() / "ca.crt", kCaPem);
  write(dir.path() / "token", "first-token");
  write(dir.path() / "namespace", "prefect\n");
  auto connection = inClusterConnection("10.96.0.1", "443", dir.path());
  ASSERT_TRUE(connection.ok()) << connection.error().message;
  EXPECT_EQ(connection->server, "https://10.96.0.1:443");
  EXPECT_TRUE(connection->tls.verify);
  EXPECT_EQ(connection->tls.ca_pem, kCaPem);
  EXPECT_EQ(connection->context_namespace, "prefect");
  EXPECT_EQ(connection->token.get().valueOr(""), "first-token");

  // The kubelet rotates the projected token: the next request uses the new one.
  write(dir.path() / "token", "second-token");
  fs::last_write_time(dir.path() / "token",
                      fs::last_write_time(dir.path() / "token") + std::chrono::seconds(5));
  EXPECT_EQ(connection->token.get().valueOr(""), "second-token");

  // A rotation's brief gap (file missing) keeps the last good token.
  fs::remove(dir.path() / "token");
  EXPECT_EQ(connection->token.get().valueOr(""), "second-token");

  auto v6 = inClusterConnection("fd00::1", "6443", dir.path());
  ASSERT_FALSE(v6.ok()) << "the token file is gone";
  write(dir.path() / "token", "t");
  v6 = inClusterConnection("fd00::1", "6443", dir.path());
  ASSERT_TRUE(v6.ok());
  EXPECT_EQ(v6->server, "https://[fd00::1]:6443");
}

TEST(InClusterTest, NotInAClusterAndMissingCa) {
  testing::TempDir dir;
  auto outside = inClusterConnection("", "", dir.path());
  ASSERT_FALSE(outside.ok());
  EXPECT_EQ(outside.error().kind, ErrorKind::NotFound);
  auto no_ca = inClusterConnection("10.0.0.1", "443", dir.path());
  ASSERT_FALSE(no_ca.ok());
  EXPECT_EQ(no_ca.error().kind, ErrorKind::InvalidConfiguration);
  EXPECT_NE(no_ca.error().message.find("ca.crt"), std::string::npos);
}

TEST(ResolveConnectionTest, PrefectOrderClusterConfigThenInClusterThenKubeconfig) {
  testing::TempDir dir;
  write(dir.path() / "ca.crt", kCaPem);
  write(dir.path() / "token", "sa-token");
  write(dir.path() / "kubeconfig", R"(
current-context: file
clusters: [{name: f, cluster: {server: "https://file.example"}}]
contexts: [{name: file, context: {cluster: f}}]
)");
  ConnectionEnvironment env;
  env.service_account_directory = dir.path();
  env.kubeconfig = (dir.path() / "kubeconfig").string();

  auto from_file = resolveConnection(nullptr, env);
  ASSERT_TRUE(from_file.ok()) << from_file.error().message;
  EXPECT_EQ(from_file->server, "https://file.example");

  env.service_host = "10.96.0.1";
  env.service_port = "443";
  auto in_cluster = resolveConnection(nullptr, env);
  ASSERT_TRUE(in_cluster.ok()) << in_cluster.error().message;
  EXPECT_EQ(in_cluster->server, "https://10.96.0.1:443");

  const Json block = {
      {"config",
       {{"current-context", "a"},
        {"clusters", Json::array({{{"name", "a"}, {"cluster", {{"server", "https://block"}}}},
                                  {{"name", "b"}, {"cluster", {{"server", "https://b"}}}}})},
        {"contexts", Json::array({{{"name", "a"}, {"context", {{"cluster", "a"}}}},
                                  {{"name", "b"}, {"context", {{"cluster", "b"}}}}})}}},
      {"context_name", "b"}};
  auto from_block = resolveConnection(block, env);
  ASSERT_TRUE(from_block.ok()) << from_block.error().message;
  EXPECT_EQ(from_block->server, "https://b");

  auto bad = resolveConnection(Json("a string"), env);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message.find("cluster_config"), std::string::npos);
}

}  // namespace
}  // namespace poolworker::backends::kubernetes
