package deploy_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/goccy/go-yaml"

	"github.com/responder-dev/responder/internal/testkit"
)

var update = flag.Bool("update", false, "rewrite generated files (deploy/kubernetes/base/prometheusrule.yaml)")

// decodeYAML decodes every document of a YAML stream.
func decodeYAML(b []byte) ([]map[string]any, error) {
	dec := yaml.NewDecoder(bytes.NewReader(b))
	var docs []map[string]any
	for {
		var doc map[string]any
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return nil, err
		}
		if doc != nil {
			docs = append(docs, doc)
		}
	}
}

// decodeInto decodes YAML (or JSON) b into v, through a generic value so that
// the struct tags of the JSON shape apply.
func decodeInto(b []byte, v any) error {
	var generic any
	if err := yaml.Unmarshal(b, &generic); err != nil {
		return err
	}
	j, err := json.Marshal(generic)
	if err != nil {
		return err
	}
	return json.Unmarshal(j, v)
}

func readFile(t *testing.T, parts ...string) []byte {
	t.Helper()
	b, err := os.ReadFile(repoPath(parts...))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestFilesParse parses every YAML and JSON file under deploy/.
func TestFilesParse(t *testing.T) {
	t.Parallel()
	n := 0
	err := filepath.WalkDir(repoPath("deploy"), func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		switch filepath.Ext(path) {
		case ".yaml", ".yml":
			docs, err := decodeYAML(b)
			if err != nil {
				t.Errorf("%s: %v", rel, err)
			} else if len(docs) == 0 {
				t.Errorf("%s: no YAML document", rel)
			}
			n++
		case ".json":
			var v any
			if err := json.Unmarshal(b, &v); err != nil {
				t.Errorf("%s: %v", rel, err)
			}
			n++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n < 20 {
		t.Errorf("parsed only %d YAML/JSON files under deploy/", n)
	}
}

// Kubernetes shapes, only the fields the tests assert.
type k8sObject struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name   string            `json:"name"`
		Labels map[string]string `json:"labels"`
	} `json:"metadata"`
}

type deployment struct {
	k8sObject
	Spec struct {
		Replicas *int `json:"replicas"`
		Strategy struct {
			Type string `json:"type"`
		} `json:"strategy"`
		Selector struct {
			MatchLabels map[string]string `json:"matchLabels"`
		} `json:"selector"`
		Template struct {
			Metadata struct {
				Labels map[string]string `json:"labels"`
			} `json:"metadata"`
			Spec podSpec `json:"spec"`
		} `json:"template"`
	} `json:"spec"`
}

type podSpec struct {
	AutomountServiceAccountToken *bool `json:"automountServiceAccountToken"`
	SecurityContext              struct {
		RunAsNonRoot   *bool `json:"runAsNonRoot"`
		RunAsUser      *int  `json:"runAsUser"`
		SeccompProfile struct {
			Type string `json:"type"`
		} `json:"seccompProfile"`
	} `json:"securityContext"`
	Containers []container `json:"containers"`
	Volumes    []struct {
		Name      string `json:"name"`
		EmptyDir  *any   `json:"emptyDir"`
		ConfigMap *struct {
			Name string `json:"name"`
		} `json:"configMap"`
		PersistentVolumeClaim *struct {
			ClaimName string `json:"claimName"`
		} `json:"persistentVolumeClaim"`
	} `json:"volumes"`
}

type container struct {
	Name  string   `json:"name"`
	Image string   `json:"image"`
	Args  []string `json:"args"`
	Ports []struct {
		Name          string `json:"name"`
		ContainerPort int    `json:"containerPort"`
	} `json:"ports"`
	Env []struct {
		Name      string `json:"name"`
		Value     string `json:"value"`
		ValueFrom *struct {
			SecretKeyRef *struct {
				Name     string `json:"name"`
				Key      string `json:"key"`
				Optional bool   `json:"optional"`
			} `json:"secretKeyRef"`
		} `json:"valueFrom"`
	} `json:"env"`
	LivenessProbe  *probe `json:"livenessProbe"`
	ReadinessProbe *probe `json:"readinessProbe"`
	Resources      struct {
		Requests map[string]string `json:"requests"`
		Limits   map[string]string `json:"limits"`
	} `json:"resources"`
	SecurityContext struct {
		RunAsNonRoot             *bool `json:"runAsNonRoot"`
		AllowPrivilegeEscalation *bool `json:"allowPrivilegeEscalation"`
		ReadOnlyRootFilesystem   *bool `json:"readOnlyRootFilesystem"`
		Capabilities             struct {
			Drop []string `json:"drop"`
		} `json:"capabilities"`
		SeccompProfile struct {
			Type string `json:"type"`
		} `json:"seccompProfile"`
	} `json:"securityContext"`
	VolumeMounts []struct {
		Name      string `json:"name"`
		MountPath string `json:"mountPath"`
		ReadOnly  bool   `json:"readOnly"`
	} `json:"volumeMounts"`
}

type probe struct {
	HTTPGet struct {
		Path string `json:"path"`
		Port any    `json:"port"`
	} `json:"httpGet"`
}

type service struct {
	k8sObject
	Spec struct {
		Selector map[string]string `json:"selector"`
		Ports    []struct {
			Name       string `json:"name"`
			Port       int    `json:"port"`
			TargetPort any    `json:"targetPort"`
		} `json:"ports"`
	} `json:"spec"`
}

type serviceMonitor struct {
	k8sObject
	Spec struct {
		Selector struct {
			MatchLabels map[string]string `json:"matchLabels"`
		} `json:"selector"`
		Endpoints []struct {
			Port string `json:"port"`
			Path string `json:"path"`
		} `json:"endpoints"`
	} `json:"spec"`
}

type pdb struct {
	k8sObject
	Spec struct {
		MinAvailable   any `json:"minAvailable"`
		MaxUnavailable any `json:"maxUnavailable"`
		Selector       struct {
			MatchLabels map[string]string `json:"matchLabels"`
		} `json:"selector"`
	} `json:"spec"`
}

// kustomization is the part of a kustomization.yaml the tests read.
type kustomization struct {
	Resources          []string `json:"resources"`
	ConfigMapGenerator []struct {
		Name  string   `json:"name"`
		Files []string `json:"files"`
	} `json:"configMapGenerator"`
	Patches []struct {
		Path  string `json:"path"`
		Patch string `json:"patch"`
	} `json:"patches"`
	Images []struct {
		Name string `json:"name"`
	} `json:"images"`
}

// manifests are the objects of a rendered or collected kustomization, by
// kind and name, with their raw documents.
type manifests map[string]map[string]any

func (m manifests) key(kind, name string) string { return kind + "/" + name }

func (m manifests) get(t *testing.T, kind, name string, v any) {
	t.Helper()
	doc, ok := m[m.key(kind, name)]
	if !ok {
		t.Fatalf("no %s %q among %v", kind, name, m.keys())
	}
	j, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(j, v); err != nil {
		t.Fatalf("%s %s: %v", kind, name, err)
	}
}

func (m manifests) keys() []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

func (m manifests) add(t *testing.T, where string, docs []map[string]any) {
	t.Helper()
	for _, d := range docs {
		kind, _ := d["kind"].(string)
		md, _ := d["metadata"].(map[string]any)
		name, _ := md["name"].(string)
		if kind == "" || name == "" {
			t.Errorf("%s: a document without kind or metadata.name", where)
			continue
		}
		m[m.key(kind, name)] = d
	}
}

// collectKustomization walks a kustomization without rendering it: every
// resource, generator file and patch it names must exist, and every patch
// must target an object of its resources. It returns the objects of the
// resources (unpatched) and the generated ConfigMap names.
func collectKustomization(t *testing.T, dir string) (manifests, []string) {
	t.Helper()
	rel, _ := filepath.Rel(root, dir)
	var k kustomization
	if err := decodeInto(readFile(t, rel, "kustomization.yaml"), &k); err != nil {
		t.Fatalf("%s/kustomization.yaml: %v", rel, err)
	}
	objs := manifests{}
	var generated []string
	for _, r := range k.Resources {
		p := filepath.Join(dir, r)
		st, err := os.Stat(p)
		if err != nil {
			t.Errorf("%s: resource %s: %v", rel, r, err)
			continue
		}
		if st.IsDir() {
			sub, gen := collectKustomization(t, p)
			for key, d := range sub {
				objs[key] = d
			}
			generated = append(generated, gen...)
			continue
		}
		docs, err := decodeYAML(readFile(t, rel, r))
		if err != nil {
			t.Errorf("%s: resource %s: %v", rel, r, err)
			continue
		}
		objs.add(t, rel+"/"+r, docs)
	}
	for _, g := range k.ConfigMapGenerator {
		generated = append(generated, g.Name)
		for _, f := range g.Files {
			if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
				t.Errorf("%s: configMapGenerator %s: %v", rel, g.Name, err)
			}
		}
	}
	for _, p := range k.Patches {
		body := []byte(p.Patch)
		if p.Path != "" {
			b, err := os.ReadFile(filepath.Join(dir, p.Path))
			if err != nil {
				t.Errorf("%s: patch %s: %v", rel, p.Path, err)
				continue
			}
			body = b
		}
		docs, err := decodeYAML(body)
		if err != nil || len(docs) != 1 {
			t.Errorf("%s: patch %s: want one strategic merge patch document, got %d (%v)", rel, p.Path, len(docs), err)
			continue
		}
		var target k8sObject
		if err := decodeInto(body, &target); err != nil {
			t.Errorf("%s: patch %s: %v", rel, p.Path, err)
			continue
		}
		if _, ok := objs[objs.key(target.Kind, target.Metadata.Name)]; !ok {
			t.Errorf("%s: patch %s targets %s %q, which no resource defines", rel, p.Path, target.Kind, target.Metadata.Name)
		}
	}
	return objs, generated
}

// TestKubernetesBase checks the objects of the kustomize base: kinds, the
// Deployment's security settings, probes, ports, secrets and volumes, and
// that Service, ServiceMonitor and PodDisruptionBudget select its pods.
func TestKubernetesBase(t *testing.T) {
	t.Parallel()
	dir := repoPath("deploy", "kubernetes", "base")
	objs, generated := collectKustomization(t, dir)
	wantKinds := []string{
		"Deployment/responder", "PersistentVolumeClaim/responder-data", "PodDisruptionBudget/responder",
		"PrometheusRule/responder", "Service/responder", "ServiceAccount/responder", "ServiceMonitor/responder",
	}
	if got := objs.keys(); !slices.Equal(got, wantKinds) {
		t.Errorf("base objects %v, want %v", got, wantKinds)
	}
	if !slices.Contains(generated, "responder-config") || !slices.Contains(generated, "responder-rules") {
		t.Errorf("base generates ConfigMaps %v, want responder-config and responder-rules", generated)
	}

	var d deployment
	objs.get(t, "Deployment", "responder", &d)
	checkDeployment(t, &d, 1, "Recreate")
	c := d.Spec.Template.Spec.Containers[0]
	mounts := map[string]string{}
	for _, m := range c.VolumeMounts {
		mounts[m.Name] = m.MountPath
	}
	vols := map[string]bool{}
	for _, v := range d.Spec.Template.Spec.Volumes {
		vols[v.Name] = true
		switch {
		case v.ConfigMap != nil && !slices.Contains(generated, v.ConfigMap.Name):
			t.Errorf("volume %s: ConfigMap %q is not generated", v.Name, v.ConfigMap.Name)
		case v.PersistentVolumeClaim != nil && objs[objs.key("PersistentVolumeClaim", v.PersistentVolumeClaim.ClaimName)] == nil:
			t.Errorf("volume %s: no PersistentVolumeClaim %q", v.Name, v.PersistentVolumeClaim.ClaimName)
		}
		if v.Name == "data" && v.PersistentVolumeClaim == nil {
			t.Error("volume data: the SQLite store must be on a PersistentVolumeClaim")
		}
	}
	for name := range mounts {
		if !vols[name] {
			t.Errorf("volume mount %s: no such volume", name)
		}
	}
	if mounts["data"] != "/var/lib/responder" {
		t.Errorf("data mounted at %q, want /var/lib/responder", mounts["data"])
	}

	// The config file named in args is in the mounted ConfigMap, and the
	// rules file it names is in the mounted rules ConfigMap.
	i := slices.Index(c.Args, "--config")
	if i < 0 || i+1 >= len(c.Args) {
		t.Fatalf("args %v: no --config", c.Args)
	}
	if got, want := c.Args[i+1], mounts["config"]+"/responder.yaml"; got != want {
		t.Errorf("--config %s, want %s", got, want)
	}
	var cfg struct {
		Store struct{ Driver, DSN string } `json:"store"`
		Rules struct {
			Files []string `json:"files"`
		} `json:"rules"`
	}
	if err := decodeInto(readFile(t, "deploy", "kubernetes", "base", "responder.yaml"), &cfg); err != nil {
		t.Fatal(err)
	}
	if want := []string{mounts["rules"] + "/rules.yaml"}; !slices.Equal(cfg.Rules.Files, want) {
		t.Errorf("rules.files %v, want %v", cfg.Rules.Files, want)
	}
	if cfg.Store.Driver != "sqlite" || filepath.Dir(cfg.Store.DSN) != mounts["data"] {
		t.Errorf("store %s %s, want sqlite under %s", cfg.Store.Driver, cfg.Store.DSN, mounts["data"])
	}

	// The Secret keys the Deployment reads are those of the documented example.
	var example struct {
		k8sObject
		StringData map[string]string `json:"stringData"`
	}
	if err := decodeInto(readFile(t, "deploy", "kubernetes", "base", "secret.example.yaml"), &example); err != nil {
		t.Fatal(err)
	}
	for _, e := range c.Env {
		if e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil {
			continue
		}
		ref := e.ValueFrom.SecretKeyRef
		if ref.Name != example.Metadata.Name {
			t.Errorf("env %s: Secret %q, the example documents %q", e.Name, ref.Name, example.Metadata.Name)
		}
		if _, ok := example.StringData[ref.Key]; !ok {
			t.Errorf("env %s: key %q is not in secret.example.yaml", e.Name, ref.Key)
		}
	}

	var svc service
	objs.get(t, "Service", "responder", &svc)
	ports := map[string]int{}
	for _, p := range svc.Spec.Ports {
		ports[p.Name] = p.Port
		if p.TargetPort != p.Name {
			t.Errorf("service port %s: targetPort %v, want the named container port", p.Name, p.TargetPort)
		}
	}
	if ports["webhooks"] != 8080 || ports["admin"] != 9090 || len(ports) != 2 {
		t.Errorf("service ports %v, want webhooks 8080 and admin 9090", ports)
	}
	podLabels := d.Spec.Template.Metadata.Labels
	if !selects(svc.Spec.Selector, podLabels) {
		t.Errorf("service selector %v does not select the pods %v", svc.Spec.Selector, podLabels)
	}
	if !selects(d.Spec.Selector.MatchLabels, podLabels) {
		t.Errorf("deployment selector %v does not select its pods %v", d.Spec.Selector.MatchLabels, podLabels)
	}

	var sm serviceMonitor
	objs.get(t, "ServiceMonitor", "responder", &sm)
	if sm.APIVersion != "monitoring.coreos.com/v1" {
		t.Errorf("ServiceMonitor apiVersion %s", sm.APIVersion)
	}
	if len(sm.Spec.Endpoints) != 1 || sm.Spec.Endpoints[0].Port != "admin" || sm.Spec.Endpoints[0].Path != "/metrics" {
		t.Errorf("ServiceMonitor endpoints %+v, want /metrics on port admin", sm.Spec.Endpoints)
	}
	if !selects(sm.Spec.Selector.MatchLabels, svc.Metadata.Labels) {
		t.Errorf("ServiceMonitor selector %v does not select the Service %v", sm.Spec.Selector.MatchLabels, svc.Metadata.Labels)
	}

	var p pdb
	objs.get(t, "PodDisruptionBudget", "responder", &p)
	if !selects(p.Spec.Selector.MatchLabels, podLabels) {
		t.Errorf("PodDisruptionBudget selector %v does not select the pods %v", p.Spec.Selector.MatchLabels, podLabels)
	}
	// One replica: minAvailable 1 would block every node drain.
	if p.Spec.MinAvailable != nil || p.Spec.MaxUnavailable != float64(1) {
		t.Errorf("base PodDisruptionBudget minAvailable %v maxUnavailable %v, want maxUnavailable 1", p.Spec.MinAvailable, p.Spec.MaxUnavailable)
	}
}

// checkDeployment asserts what every variant of the Deployment keeps.
func checkDeployment(t *testing.T, d *deployment, replicas int, strategy string) {
	t.Helper()
	if d.Spec.Replicas == nil || *d.Spec.Replicas != replicas {
		t.Errorf("replicas %v, want %d", d.Spec.Replicas, replicas)
	}
	if d.Spec.Strategy.Type != strategy {
		t.Errorf("strategy %q, want %q", d.Spec.Strategy.Type, strategy)
	}
	ps := d.Spec.Template.Spec
	if ps.SecurityContext.RunAsNonRoot == nil || !*ps.SecurityContext.RunAsNonRoot {
		t.Error("pod securityContext.runAsNonRoot is not true")
	}
	if ps.SecurityContext.RunAsUser == nil || *ps.SecurityContext.RunAsUser == 0 {
		t.Error("pod securityContext.runAsUser is not a non-root uid")
	}
	if ps.SecurityContext.SeccompProfile.Type != "RuntimeDefault" {
		t.Errorf("pod seccompProfile %q, want RuntimeDefault", ps.SecurityContext.SeccompProfile.Type)
	}
	if ps.AutomountServiceAccountToken == nil || *ps.AutomountServiceAccountToken {
		t.Error("automountServiceAccountToken is not false: the responder needs no Kubernetes API")
	}
	if len(ps.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(ps.Containers))
	}
	c := ps.Containers[0]
	sc := c.SecurityContext
	if sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot {
		t.Error("container runAsNonRoot is not true")
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Error("container readOnlyRootFilesystem is not true")
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Error("container allowPrivilegeEscalation is not false")
	}
	if !slices.Equal(sc.Capabilities.Drop, []string{"ALL"}) {
		t.Errorf("container capabilities.drop %v, want [ALL]", sc.Capabilities.Drop)
	}
	if sc.SeccompProfile.Type != "RuntimeDefault" {
		t.Errorf("container seccompProfile %q, want RuntimeDefault", sc.SeccompProfile.Type)
	}
	if c.LivenessProbe == nil || c.LivenessProbe.HTTPGet.Path != "/healthz" || c.LivenessProbe.HTTPGet.Port != "webhooks" {
		t.Errorf("livenessProbe %+v, want GET /healthz on webhooks", c.LivenessProbe)
	}
	if c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet.Path != "/readyz" || c.ReadinessProbe.HTTPGet.Port != "webhooks" {
		t.Errorf("readinessProbe %+v, want GET /readyz on webhooks", c.ReadinessProbe)
	}
	for _, r := range []string{"cpu", "memory"} {
		if c.Resources.Requests[r] == "" {
			t.Errorf("no %s request", r)
		}
	}
	if c.Resources.Limits["memory"] == "" {
		t.Error("no memory limit")
	}
	ports := map[string]int{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	if ports["webhooks"] != 8080 || ports["admin"] != 9090 {
		t.Errorf("container ports %v, want webhooks 8080 and admin 9090", ports)
	}
	secrets := map[string]string{}
	for _, e := range c.Env {
		if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
			secrets[e.Name] = e.ValueFrom.SecretKeyRef.Name
		}
		if lower := strings.ToLower(e.Name); e.Value != "" && (strings.Contains(lower, "secret") || strings.Contains(lower, "token") || strings.Contains(lower, "dsn")) {
			t.Errorf("env %s carries a literal value: secrets must come from a Secret", e.Name)
		}
	}
	for _, name := range []string{"RESPONDER_DEFENDER_CLIENT_SECRET", "RESPONDER_WEBHOOKS_BEARER_TOKEN", "RESPONDER_ADMIN_BEARER_TOKEN"} {
		if secrets[name] == "" {
			t.Errorf("env %s does not come from a Secret", name)
		}
	}
	var tmp bool
	for _, m := range c.VolumeMounts {
		if m.MountPath != "/tmp" {
			continue
		}
		for _, v := range ps.Volumes {
			if v.Name == m.Name && v.EmptyDir != nil {
				tmp = true
			}
		}
	}
	if !tmp {
		t.Error("no emptyDir mounted at /tmp (the root filesystem is read-only)")
	}
}

// selects reports whether every label of sel is in labels.
func selects(sel, labels map[string]string) bool {
	if len(sel) == 0 {
		return false
	}
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// TestKubernetesPostgresOverlay checks the overlay's patches structurally:
// they exist, target objects of the base, and set what several replicas need.
func TestKubernetesPostgresOverlay(t *testing.T) {
	t.Parallel()
	dir := repoPath("deploy", "kubernetes", "overlays", "postgres")
	collectKustomization(t, dir)

	var d deployment
	if err := decodeInto(readFile(t, "deploy", "kubernetes", "overlays", "postgres", "deployment-patch.yaml"), &d); err != nil {
		t.Fatal(err)
	}
	if d.Spec.Replicas == nil || *d.Spec.Replicas < 2 {
		t.Errorf("overlay replicas %v, want several", d.Spec.Replicas)
	}
	if d.Spec.Strategy.Type != "RollingUpdate" {
		t.Errorf("overlay strategy %q, want RollingUpdate", d.Spec.Strategy.Type)
	}
	env := map[string]string{}
	for _, e := range d.Spec.Template.Spec.Containers[0].Env {
		env[e.Name] = e.Value
		if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
			env[e.Name] = "secret:" + e.ValueFrom.SecretKeyRef.Name + "/" + e.ValueFrom.SecretKeyRef.Key
		}
	}
	if env["RESPONDER_STORE_DRIVER"] != "postgres" || !strings.HasPrefix(env["RESPONDER_STORE_DSN"], "secret:") {
		t.Errorf("overlay store env %v, want driver postgres and the DSN from a Secret", env)
	}
	var p pdb
	if err := decodeInto(readFile(t, "deploy", "kubernetes", "overlays", "postgres", "pdb-patch.yaml"), &p); err != nil {
		t.Fatal(err)
	}
	if p.Spec.MinAvailable != float64(2) {
		t.Errorf("overlay PodDisruptionBudget minAvailable %v, want 2", p.Spec.MinAvailable)
	}
}

// TestKustomizeBuild renders the base and the overlay with kustomize (or
// kubectl kustomize) and checks the rendered Deployments. Debian has no
// kustomize package: .ci/run installs it with go install when neither
// program is in PATH. TestKubernetesBase and TestKubernetesPostgresOverlay
// check the kustomizations without them.
func TestKustomizeBuild(t *testing.T) {
	t.Parallel()
	var render []string
	if p, err := exec.LookPath("kustomize"); err == nil {
		render = []string{p, "build"}
	} else if p, err := exec.LookPath("kubectl"); err == nil {
		render = []string{p, "kustomize"}
	} else {
		testkit.Skip(t, "neither kustomize nor kubectl is in PATH (go install sigs.k8s.io/kustomize/kustomize/v5, as .ci/run does)")
	}
	build := func(dir string) manifests {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, render[0], append(render[1:], dir)...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%s %s: %v\n%s", strings.Join(render, " "), dir, err, stderr.String())
		}
		docs, err := decodeYAML(out)
		if err != nil {
			t.Fatalf("rendered %s: %v", dir, err)
		}
		m := manifests{}
		m.add(t, dir, docs)
		return m
	}

	base := build(repoPath("deploy", "kubernetes", "base"))
	var d deployment
	base.get(t, "Deployment", "responder", &d)
	checkDeployment(t, &d, 1, "Recreate")
	for _, k := range []string{"ConfigMap/responder-rules", "PersistentVolumeClaim/responder-data", "ServiceMonitor/responder", "PrometheusRule/responder"} {
		if base[k] == nil {
			t.Errorf("rendered base has no %s", k)
		}
	}

	pg := build(repoPath("deploy", "kubernetes", "overlays", "postgres"))
	var dp deployment
	pg.get(t, "Deployment", "responder", &dp)
	checkDeployment(t, &dp, 3, "RollingUpdate")
	if pg["PersistentVolumeClaim/responder-data"] != nil {
		t.Error("the postgres overlay still has the SQLite volume claim")
	}
	for _, v := range dp.Spec.Template.Spec.Volumes {
		if v.PersistentVolumeClaim != nil {
			t.Errorf("postgres overlay: volume %s still claims %s", v.Name, v.PersistentVolumeClaim.ClaimName)
		}
	}
	var p pdb
	pg.get(t, "PodDisruptionBudget", "responder", &p)
	if p.Spec.MinAvailable != float64(2) || p.Spec.MaxUnavailable != nil {
		t.Errorf("postgres PodDisruptionBudget minAvailable %v maxUnavailable %v, want minAvailable 2 only", p.Spec.MinAvailable, p.Spec.MaxUnavailable)
	}
}

// TestKubernetesConfigPassesCheck runs `responder check` over the
// configuration and rules of the base, as the pod would load them (with the
// Secret's variables set), and with the overlay's store settings.
func TestKubernetesConfigPassesCheck(t *testing.T) {
	t.Parallel()
	base := repoPath("deploy", "kubernetes", "base")
	env := []string{
		"RESPONDER_RULES_FILES=" + filepath.Join(base, "rules.yaml"),
		"RESPONDER_WEBHOOKS_BEARER_TOKEN=test-webhook-token",
		"RESPONDER_ADMIN_BEARER_TOKEN=test-admin-token",
	}
	for _, tc := range []struct {
		name string
		env  []string
	}{
		{"base", nil},
		{"postgres overlay", []string{"RESPONDER_STORE_DRIVER=postgres", "RESPONDER_STORE_DSN=postgres://responder@db:5432/responder?sslmode=verify-full"}},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		cmd := exec.CommandContext(ctx, binary, "check", "--config", filepath.Join(base, "responder.yaml"))
		cmd.Env = append(append([]string{"PATH=" + os.Getenv("PATH")}, env...), tc.env...)
		out, err := cmd.CombinedOutput()
		cancel()
		if err != nil {
			t.Errorf("%s: responder check: %v\n%s", tc.name, err, out)
		}
	}
	// The admin listener binds every interface of the pod: without the
	// Secret's admin token the configuration is refused.
	cmd := exec.Command(binary, "check", "--config", filepath.Join(base, "responder.yaml"))
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), env[0], env[1]}
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "no admin token is set") {
		t.Errorf("responder check without the admin token: %v\n%s", err, out)
	}
}

// TestRulesConfigMapIsTheExample keeps the rules of the base equal to
// examples/rules.yaml, which `responder test examples/rules_test.yaml` covers.
func TestRulesConfigMapIsTheExample(t *testing.T) {
	t.Parallel()
	if !bytes.Equal(readFile(t, "deploy", "kubernetes", "base", "rules.yaml"), readFile(t, "examples", "rules.yaml")) {
		t.Error("deploy/kubernetes/base/rules.yaml differs from examples/rules.yaml: cp examples/rules.yaml deploy/kubernetes/base/")
	}
}

// prometheusRuleHeader precedes the groups of alerts.yml in the
// PrometheusRule of the base.
const prometheusRuleHeader = "# GENERATED from deploy/prometheus/alerts.yml by `go test ./deploy -run TestPrometheusRuleInSync -update`:\n" +
	"# edit alerts.yml, not this file. The alert rules of the responder for the\n" +
	"# Prometheus Operator; the operator's ruleSelector may require extra labels\n" +
	"# (e.g. release: kube-prometheus-stack): add them with a kustomize patch.\n" +
	"apiVersion: monitoring.coreos.com/v1\n" +
	"kind: PrometheusRule\n" +
	"metadata:\n" +
	"  name: responder\n" +
	"  labels:\n" +
	"    app.kubernetes.io/name: responder\n" +
	"spec:\n"

// TestPrometheusRuleInSync keeps the PrometheusRule of the base equal to
// deploy/prometheus/alerts.yml (its groups, indented under spec). Run with
// -update to regenerate it.
func TestPrometheusRuleInSync(t *testing.T) {
	alerts := string(readFile(t, "deploy", "prometheus", "alerts.yml"))
	i := strings.Index(alerts, "\ngroups:")
	if i < 0 {
		t.Fatal("alerts.yml: no top-level groups:")
	}
	var b strings.Builder
	b.WriteString(prometheusRuleHeader)
	for _, line := range strings.SplitAfter(alerts[i+1:], "\n") {
		if strings.TrimSpace(line) != "" {
			b.WriteString("  ")
		}
		b.WriteString(line)
	}
	want := b.String()
	path := repoPath("deploy", "kubernetes", "base", "prometheusrule.yaml")
	if *update {
		if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if got := string(readFile(t, "deploy", "kubernetes", "base", "prometheusrule.yaml")); got != want {
		t.Error("deploy/kubernetes/base/prometheusrule.yaml is not alerts.yml: go test ./deploy -run TestPrometheusRuleInSync -update")
	}
	// And it means the same thing.
	var a, pr struct {
		Groups []any `json:"groups"`
		Spec   struct {
			Groups []any `json:"groups"`
		} `json:"spec"`
	}
	if err := decodeInto([]byte(alerts), &a); err != nil {
		t.Fatal(err)
	}
	if err := decodeInto([]byte(want), &pr); err != nil {
		t.Fatal(err)
	}
	ja, _ := json.Marshal(a.Groups)
	jp, _ := json.Marshal(pr.Spec.Groups)
	if len(a.Groups) == 0 || !bytes.Equal(ja, jp) {
		t.Error("the PrometheusRule's spec.groups differ from alerts.yml's groups")
	}
}

// TestAlertRules checks every alert rule's labels and annotations, that the
// alerts the issue asks for exist, and that alerts_test.yml has, for every
// alert, a case where it fires and one where it does not.
func TestAlertRules(t *testing.T) {
	t.Parallel()
	var rf struct {
		Groups []struct {
			Rules []struct {
				Alert       string            `json:"alert"`
				Expr        string            `json:"expr"`
				Labels      map[string]string `json:"labels"`
				Annotations map[string]string `json:"annotations"`
			} `json:"rules"`
		} `json:"groups"`
	}
	if err := decodeInto(readFile(t, "deploy", "prometheus", "alerts.yml"), &rf); err != nil {
		t.Fatal(err)
	}
	alerts := map[string]bool{}
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				t.Errorf("a recording rule or an alert without a name: %s", r.Expr)
				continue
			}
			alerts[r.Alert] = true
			if s := r.Labels["severity"]; s != "critical" && s != "warning" {
				t.Errorf("%s: severity %q, want critical or warning", r.Alert, s)
			}
			for _, a := range []string{"summary", "description", "runbook"} {
				if strings.TrimSpace(r.Annotations[a]) == "" {
					t.Errorf("%s: no %s annotation", r.Alert, a)
				}
			}
		}
	}
	for _, name := range []string{
		"ResponderDown", "ResponderWebhook5xxRatioHigh", "ResponderDefenderForbidden", "ResponderDefenderErrorRatioHigh",
		"ResponderQuotaExhausted", "ResponderQueueBacklogGrowing", "ResponderActionsFailing", "ResponderCircuitOpen",
		"ResponderRulesReloadFailed", "ResponderPaused",
	} {
		if !alerts[name] {
			t.Errorf("alerts.yml has no %s", name)
		}
	}

	var tf struct {
		Tests []struct {
			Name           string `json:"name"`
			AlertRuleTests []struct {
				Alertname string `json:"alertname"`
				ExpAlerts []any  `json:"exp_alerts"`
			} `json:"alert_rule_test"`
		} `json:"tests"`
	}
	if err := decodeInto(readFile(t, "deploy", "prometheus", "alerts_test.yml"), &tf); err != nil {
		t.Fatal(err)
	}
	fires, quiet := map[string]bool{}, map[string]bool{}
	for _, tc := range tf.Tests {
		for _, a := range tc.AlertRuleTests {
			if !alerts[a.Alertname] {
				t.Errorf("test %q: alert %s is not in alerts.yml", tc.Name, a.Alertname)
			}
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname] = true
			} else {
				quiet[a.Alertname] = true
			}
		}
	}
	for name := range alerts {
		if !fires[name] {
			t.Errorf("alerts_test.yml has no case where %s fires", name)
		}
		if !quiet[name] {
			t.Errorf("alerts_test.yml has no case where %s stays quiet", name)
		}
	}
}

// TestCompose checks the compose file: the three services, the responder
// built from the repository's Dockerfile in --dev mode with webhook and admin
// tokens (so that it may listen on every interface), loopback-only published
// ports, and bind mounts of files that exist; and that the responder starts
// with the compose file's environment.
func TestCompose(t *testing.T) {
	t.Parallel()
	var c struct {
		Services map[string]struct {
			Build *struct {
				Context    string `json:"context"`
				Dockerfile string `json:"dockerfile"`
			} `json:"build"`
			Image       string            `json:"image"`
			Command     []string          `json:"command"`
			Environment map[string]string `json:"environment"`
			Ports       []string          `json:"ports"`
			Volumes     []string          `json:"volumes"`
		} `json:"services"`
	}
	if err := decodeInto(readFile(t, "deploy", "compose", "compose.yaml"), &c); err != nil {
		t.Fatal(err)
	}
	dir := repoPath("deploy", "compose")
	for _, name := range []string{"responder", "prometheus", "grafana"} {
		if _, ok := c.Services[name]; !ok {
			t.Errorf("no %s service", name)
		}
	}
	r := c.Services["responder"]
	if r.Build == nil {
		t.Fatal("the responder service is not built from the Dockerfile")
	}
	if _, err := os.Stat(filepath.Join(dir, r.Build.Context, r.Build.Dockerfile)); err != nil {
		t.Errorf("responder build: %v", err)
	}
	if !slices.Equal(r.Command, []string{"serve", "--dev"}) {
		t.Errorf("responder command %v, want serve --dev", r.Command)
	}
	if r.Environment["RESPONDER_WEBHOOKS_BEARER_TOKEN"] == "" || !strings.HasPrefix(r.Environment["RESPONDER_SERVER_LISTEN"], "0.0.0.0:") {
		t.Errorf("responder environment %v: --dev needs webhook auth to listen beyond loopback", r.Environment)
	}
	if r.Environment["RESPONDER_ADMIN_BEARER_TOKEN"] == "" || !strings.HasPrefix(r.Environment["RESPONDER_SERVER_ADMIN_LISTEN"], "0.0.0.0:") {
		t.Errorf("responder environment %v: the admin API needs a token to listen beyond loopback", r.Environment)
	}
	// Start it as the container would (every interface), on free ports.
	var env []string
	for k, v := range r.Environment {
		if k == "RESPONDER_SERVER_LISTEN" || k == "RESPONDER_SERVER_ADMIN_LISTEN" {
			v = "0.0.0.0:0"
		}
		env = append(env, k+"="+v)
	}
	started := make(chan struct{}, 1)
	p := start(t, binary, env, func(line string) {
		if strings.Contains(line, `"msg":"responder starting"`) {
			select {
			case started <- struct{}{}:
			default:
			}
		}
	}, r.Command...)
	select {
	case <-started:
	case <-p.exited:
		t.Fatalf("responder with the compose environment exited: %v\n%s", p.err, p.output())
	case <-time.After(30 * time.Second):
		t.Fatalf("responder with the compose environment did not start within 30s:\n%s", p.output())
	}
	for name, s := range c.Services {
		for _, p := range s.Ports {
			if !strings.HasPrefix(p, "127.0.0.1:") {
				t.Errorf("%s: port %s is published beyond loopback", name, p)
			}
		}
		for _, v := range s.Volumes {
			src, _, ok := strings.Cut(v, ":")
			if !ok || !strings.HasPrefix(src, ".") {
				continue // a named volume
			}
			if _, err := os.Stat(filepath.Join(dir, src)); err != nil {
				t.Errorf("%s: volume %s: %v", name, v, err)
			}
		}
	}
}

// TestSystemdUnit checks the sandboxing of the unit; TestSystemdAnalyzeVerify
// has systemd verify it.
func TestSystemdUnit(t *testing.T) {
	t.Parallel()
	unit := string(readFile(t, "deploy", "systemd", "responder.service"))
	set := map[string][]string{}
	for _, line := range strings.Split(unit, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, "[") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Errorf("not a directive: %q", line)
			continue
		}
		set[k] = append(set[k], v)
	}
	for k, want := range map[string]string{
		"DynamicUser": "yes", "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
		"PrivateTmp": "yes", "StateDirectory": "responder", "ReadWritePaths": "/var/lib/responder",
		"CapabilityBoundingSet": "", "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
		"MemoryDenyWriteExecute": "yes", "LockPersonality": "yes", "RestrictNamespaces": "yes",
		"ProtectKernelTunables": "yes", "ProtectKernelModules": "yes", "ProtectKernelLogs": "yes",
		"ProtectControlGroups": "yes", "Restart": "on-failure", "ExecReload": "/bin/kill -HUP $MAINPID",
		"EnvironmentFile": "/etc/responder/responder.env",
	} {
		if !slices.Contains(set[k], want) {
			t.Errorf("%s=%s missing (have %q)", k, want, set[k])
		}
	}
	if !slices.Contains(set["SystemCallFilter"], "@system-service") {
		t.Errorf("SystemCallFilter=@system-service missing (have %q)", set["SystemCallFilter"])
	}
	if len(set["ExecStart"]) != 1 || !strings.Contains(set["ExecStart"][0], " serve --config ") {
		t.Errorf("ExecStart %q, want responder serve --config FILE", set["ExecStart"])
	}
}

// TestSystemdAnalyzeVerify has systemd-analyze verify the unit.
func TestSystemdAnalyzeVerify(t *testing.T) {
	t.Parallel()
	analyze := testkit.LookPath(t, "systemd-analyze", "Debian's systemd package: apt-get install -y systemd, as .ci/run does")
	unit := string(readFile(t, "deploy", "systemd", "responder.service"))
	// verify wants the binaries to exist: point the unit at the test build.
	path := filepath.Join(t.TempDir(), "responder.service")
	if err := os.WriteFile(path, []byte(strings.ReplaceAll(unit, "/usr/local/bin/responder", binary)), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, analyze, "verify", path).CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}
