use super::*;

fn yaml(text: &str) -> LoadReport {
    load_str(Path::new("test.yaml"), text)
}

const POD_A: &str = "apiVersion: v1
kind: Pod
metadata:
  name: a
  labels: {app: web}
spec:
  nodeName: node-a
  containers: [{name: c, image: x}]
status:
  podIP: 10.244.1.2
";

#[test]
fn multi_document_yaml_loads_every_kind() {
    let text = format!(
        "{POD_A}---
apiVersion: v1
kind: Namespace
metadata: {{name: kube-system}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: prod}}
spec:
  clusterIP: 10.96.0.10
  ports: [{{port: 80}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-1, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
endpoints: [{{addresses: [10.244.1.2]}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: deny}}
spec: {{podSelector: {{}}}}
---
apiVersion: v1
kind: Node
metadata: {{name: node-a}}
spec: {{podCIDR: 10.244.1.0/24}}
"
    );
    let r = yaml(&text);
    assert!(r.is_clean(), "{:?} {:?}", r.warnings, r.errors);
    let s = &r.state;
    assert_eq!(s.namespaces.keys().collect::<Vec<_>>(), vec!["kube-system"]);
    assert!(s.pods.contains_key(&("default".into(), "a".into())));
    let pod = &s.pods[&("default".into(), "a".into())];
    assert_eq!(pod.metadata.namespace.as_deref(), Some("default"));
    assert_eq!(
        pod.status.as_ref().unwrap().pod_ip.as_deref(),
        Some("10.244.1.2")
    );
    assert!(s.services.contains_key(&("prod".into(), "web".into())));
    assert!(s
        .endpoint_slices
        .contains_key(&("default".into(), "web-1".into())));
    assert!(s
        .network_policies
        .contains_key(&("default".into(), "deny".into())));
    assert_eq!(
        s.nodes["node-a"].spec.as_ref().unwrap().pod_cidr.as_deref(),
        Some("10.244.1.0/24")
    );
}

#[test]
fn list_items_load_with_item_indices() {
    let r = yaml(
        "apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Pod
  metadata: {name: p1}
- apiVersion: v1
  kind: Pod
  metadata: {name: p2}
  spec: {containers: 7}
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: cm}
- apiVersion: v1
  kind: Pod
  metadata: {name: p3, namespace: ns}
",
    );
    assert_eq!(r.state.pods.len(), 2);
    assert!(r.state.pods.contains_key(&("ns".into(), "p3".into())));
    assert_eq!(r.errors.len(), 1);
    let e = &r.errors[0];
    assert_eq!(e.origin.doc, Some(0));
    assert_eq!(e.origin.item, Some(1));
    assert_eq!(e.kind.as_deref(), Some("Pod"));
    assert_eq!(e.name.as_deref(), Some("default/p2"));
    assert!(e.message.contains("spec.containers"), "{}", e.message);
    assert_eq!(r.warnings.len(), 1);
    assert_eq!(r.warnings[0].origin.item, Some(2));
    assert_eq!(r.warnings[0].kind.as_deref(), Some("ConfigMap"));
}

#[test]
fn typed_list_items_inherit_kind_and_api_version() {
    let r = yaml(
        "apiVersion: v1
kind: PodList
items:
- metadata: {name: p1, namespace: x}
",
    );
    assert!(r.is_clean(), "{:?}", r.errors);
    assert!(r.state.pods.contains_key(&("x".into(), "p1".into())));
}

#[test]
fn unknown_kind_is_a_warning() {
    let r = yaml(
        "apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: example-ingress}
",
    );
    assert!(r.errors.is_empty());
    assert_eq!(r.warnings.len(), 1);
    let w = &r.warnings[0];
    assert_eq!(w.kind.as_deref(), Some("Ingress"));
    assert_eq!(w.name.as_deref(), Some("example-ingress"));
    assert!(w.to_string().contains("test.yaml: document 0"), "{w}");
}

#[test]
fn broken_object_in_the_middle_is_reported_and_neighbours_load() {
    let r = yaml(&format!(
        "{POD_A}---
apiVersion: v1
kind: Service
metadata: {{name: bad}}
spec:
  ports:
  - port: not-a-number
---
apiVersion: v1
kind: Service
metadata: {{name: good}}
spec: {{clusterIP: 10.96.0.1}}
"
    ));
    assert_eq!(r.state.pods.len(), 1);
    assert_eq!(
        r.state.services.keys().collect::<Vec<_>>(),
        vec![&("default".to_string(), "good".to_string())]
    );
    assert_eq!(r.errors.len(), 1);
    let e = &r.errors[0];
    assert_eq!(e.origin.file, Path::new("test.yaml"));
    assert_eq!(e.origin.doc, Some(1));
    assert_eq!(e.origin.item, None);
    assert_eq!(e.origin.line, Some(11));
    assert_eq!(e.kind.as_deref(), Some("Service"));
    assert_eq!(e.name.as_deref(), Some("default/bad"));
    assert!(e.message.contains("spec.ports[0].port"), "{}", e.message);
}

#[test]
fn yaml_syntax_error_spoils_only_its_document() {
    let r = yaml(&format!(
        "{POD_A}---
kind: Service
metadata: [unclosed
---
apiVersion: v1
kind: Namespace
metadata: {{name: ok}}
"
    ));
    assert_eq!(r.state.pods.len(), 1);
    assert!(r.state.namespaces.contains_key("ok"));
    assert_eq!(r.errors.len(), 1);
    assert_eq!(r.errors[0].origin.doc, Some(1));
    let e = &r.errors[0];
    assert!(e.message.starts_with("invalid YAML"), "{e}");
    // Line numbers are the file's, not the document's.
    assert_eq!(e.origin.line, Some(11));
    assert!(e.message.contains("line 13"), "{e}");
    assert!(
        e.to_string()
            .starts_with("test.yaml: document 1 (line 11): invalid YAML"),
        "{e}"
    );
}

#[test]
fn missing_kind_api_version_or_name_are_errors() {
    let r = yaml(
        "metadata: {name: x}
---
kind: Pod
metadata: {name: y}
---
apiVersion: v1
kind: Pod
metadata: {}
---
apiVersion: discovery.k8s.io/v1beta1
kind: EndpointSlice
metadata: {name: old}
---
- just a list
",
    );
    assert!(r.state.pods.is_empty());
    let msgs: Vec<(Option<usize>, &str)> = r
        .errors
        .iter()
        .map(|e| (e.origin.doc, e.message.as_str()))
        .collect();
    assert_eq!(msgs.len(), 5, "{msgs:?}");
    assert_eq!(msgs[0], (Some(0), "no `kind`"));
    assert_eq!(msgs[1], (Some(1), "no `apiVersion`"));
    assert_eq!(msgs[2], (Some(2), "no `metadata.name`"));
    assert!(msgs[3].1.contains("v1beta1 is not supported"));
    assert_eq!(msgs[4], (Some(4), "expected an object, found a list"));
}

#[test]
fn empty_documents_are_skipped_but_counted() {
    let r = yaml(
        "# leading comment
---
---
# only a comment
---
apiVersion: v1
kind: Pod
metadata: {name: a}
spec: {containers: 1}
...
---
",
    );
    assert_eq!(r.errors.len(), 1);
    // Documents: 0 empty, 1 comment-only, 2 the pod, 3 empty.
    assert_eq!(r.errors[0].origin.doc, Some(2));
    assert_eq!(r.errors[0].origin.line, Some(5));
    assert!(yaml("").is_clean());
    assert!(yaml("---\n...\n# nothing\n").is_clean());
}

#[test]
fn split_keeps_content_after_the_marker() {
    let docs = split_yaml("--- {a: 1}\n--- b\n...\nc: 2\n");
    let texts: Vec<(usize, usize, &str)> = docs
        .iter()
        .map(|d| (d.index, d.line, d.text.trim()))
        .collect();
    assert_eq!(texts, vec![(0, 1, "{a: 1}"), (1, 2, "b"), (2, 4, "c: 2")]);
    // `----` and `---x` are content, not markers.
    assert_eq!(split_yaml("a: |\n ----\n---x: 1\n").len(), 1);
}

#[test]
fn json_file_with_one_or_more_objects() {
    let r = load_str(
        Path::new("objs.json"),
        r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"a"}}
           {"apiVersion":"v1","kind":"List","items":[
             {"apiVersion":"v1","kind":"Namespace","metadata":{"name":"n"}},
             {"apiVersion":"v1","kind":"Pod","metadata":{"name":7}}]}"#,
    );
    assert!(r.state.pods.contains_key(&("default".into(), "a".into())));
    assert!(r.state.namespaces.contains_key("n"));
    assert_eq!(r.errors.len(), 1);
    assert_eq!(r.errors[0].origin.doc, Some(1));
    assert_eq!(r.errors[0].origin.item, Some(1));
    let broken = load_str(Path::new("x.json"), r#"{"kind": "Pod", "#);
    assert_eq!(broken.errors.len(), 1);
    assert!(broken.errors[0].message.starts_with("invalid JSON"));
}

#[test]
fn duplicate_keys_later_wins_with_warning() {
    let r = yaml(
        "apiVersion: v1
kind: Service
metadata: {name: s}
spec: {clusterIP: 10.96.0.1}
---
apiVersion: v1
kind: Service
metadata: {name: s, namespace: default}
spec: {clusterIP: 10.96.0.2}
",
    );
    assert!(r.errors.is_empty());
    let svc = &r.state.services[&("default".into(), "s".into())];
    assert_eq!(
        svc.spec.as_ref().unwrap().cluster_ip.as_deref(),
        Some("10.96.0.2")
    );
    assert_eq!(r.warnings.len(), 1);
    assert_eq!(r.warnings[0].origin.doc, Some(1));
    assert!(
        r.warnings[0].message.contains("test.yaml: document 0"),
        "{}",
        r.warnings[0].message
    );
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kxdp-manifests-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn ns_doc(name: &str, cluster_ip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec: {{clusterIP: {cluster_ip}}}\n"
    )
}

#[test]
fn directory_recursion_is_sorted_and_filters_extensions() {
    let d = temp_dir("dir");
    std::fs::create_dir_all(d.join("b/nested")).unwrap();
    std::fs::create_dir_all(d.join(".hidden")).unwrap();
    // The same Service in several files: the last in sorted order wins.
    std::fs::write(d.join("a.yaml"), ns_doc("s", "10.96.0.1")).unwrap();
    std::fs::write(d.join("b/nested/z.yml"), ns_doc("s", "10.96.0.3")).unwrap();
    std::fs::write(d.join("b/m.json"), r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"s"},"spec":{"clusterIP":"10.96.0.2"}}"#).unwrap();
    std::fs::write(d.join("c.txt"), "not: yaml: at: all").unwrap();
    std::fs::write(d.join(".hidden/x.yaml"), ns_doc("s", "10.96.0.9")).unwrap();
    std::fs::write(d.join("bad.yaml"), "kind: [").unwrap();
    let r = load_path(&d).unwrap();
    let svc = &r.state.services[&("default".into(), "s".into())];
    assert_eq!(
        svc.spec.as_ref().unwrap().cluster_ip.as_deref(),
        Some("10.96.0.3")
    );
    // a.yaml, b/m.json, b/nested/z.yml: two replacements, in that order.
    let files: Vec<String> = r
        .warnings
        .iter()
        .map(|w| {
            w.origin
                .file
                .strip_prefix(&d)
                .unwrap()
                .display()
                .to_string()
        })
        .collect();
    assert_eq!(files, vec!["b/m.json", "b/nested/z.yml"]);
    assert_eq!(r.errors.len(), 1);
    assert_eq!(r.errors[0].origin.file, d.join("bad.yaml"));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn missing_root_is_an_error() {
    assert!(matches!(
        load_path(Path::new("/nonexistent/kxdp/manifests")),
        Err(ManifestError::Io { .. })
    ));
}
