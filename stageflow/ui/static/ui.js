// stageflow ui: live updates, node selection, and an input's check against its schema.
// No framework: the pages work without this script (forms post, links link).
"use strict";

(function () {
  // ---------------------------------------------------------------- live updates
  const live = document.getElementById("live");
  if (live && live.dataset.stream && window.EventSource) {
    const source = new EventSource(live.dataset.stream);
    source.addEventListener("rows", function (event) {
      const rows = document.getElementById("rows");
      if (rows) {
        rows.innerHTML = event.data;
        live.textContent = "Updated " + new Date().toLocaleTimeString() + ".";
      }
    });
    source.addEventListener("changed", function () {
      source.close();
      const typing = Array.from(document.querySelectorAll("textarea, input[name=reason]"))
        .some(function (el) { return el.dataset.dirty === "1"; });
      if (typing) {
        live.textContent = "This session has changed. Reload the page to see it.";
      } else {
        const url = new URL(window.location.href);
        url.searchParams.delete("notice");
        url.searchParams.delete("seq");
        window.location.replace(url.toString());
      }
    });
    // Sent by the server, then the stream ends: the session was purged or its file removed.
    source.addEventListener("gone", function (event) {
      source.close();
      live.textContent = "This session no longer exists: " + event.data;
    });
    // The store (or a snapshot file) cannot be read now; an empty one: it reads again.
    source.addEventListener("problem", function (event) {
      live.textContent = event.data
        ? "Live updates paused: " + event.data
        : "Live updates go on.";
    });
  }
  document.querySelectorAll("textarea, input[name=reason]").forEach(function (el) {
    el.addEventListener("input", function () { el.dataset.dirty = "1"; });
  });

  // -------------------------------------------------------------- node selection
  function select(nodeId) {
    document.querySelectorAll("svg.graph .node.selected").forEach(function (n) {
      n.classList.remove("selected");
    });
    const drawn = document.querySelector('svg.graph .node[data-node="' + CSS.escape(nodeId) + '"]');
    if (drawn) drawn.classList.add("selected");
    const detail = document.getElementById("node-" + nodeId);
    if (detail) {
      detail.open = true;
      detail.scrollIntoView({ block: "nearest" });
    }
  }
  document.querySelectorAll("svg.graph .node[tabindex]").forEach(function (node) {
    node.addEventListener("click", function () { select(node.dataset.node); });
    node.addEventListener("keydown", function (event) {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        select(node.dataset.node);
      }
    });
  });

  // --------------------------------------------------- JSON Schema, the common part
  // Checks the keywords most input schemas use; what it does not know it leaves to
  // the server, which checks every payload again with a full validator.
  function typeOf(value) {
    if (value === null) return "null";
    if (Array.isArray(value)) return "array";
    if (typeof value === "number") return Number.isInteger(value) ? "integer" : "number";
    return typeof value;
  }
  function fits(value, type) {
    const actual = typeOf(value);
    return actual === type || (type === "number" && actual === "integer");
  }
  // A pattern this browser cannot compile (Python's re reads more) is left to the
  // server: thrown here, it stopped the whole check of the form.
  function regex(pattern) {
    try {
      return new RegExp(pattern, "u");
    } catch (err) {
      return null;
    }
  }
  // Equal as JSON values: objects by their members, whatever the order of the keys
  // (JSON.stringify told {"a":1,"b":2} from {"b":2,"a":1}, refusing a payload the
  // server takes).
  function equal(a, b) {
    if (a === b) return true;
    const type = typeOf(a);
    if (type !== typeOf(b)) return false;
    if (type === "array") {
      return a.length === b.length && a.every(function (item, i) { return equal(item, b[i]); });
    }
    if (type === "object") {
      const keys = Object.keys(a);
      return keys.length === Object.keys(b).length && keys.every(function (key) {
        return has(b, key) && equal(a[key], b[key]);
      });
    }
    return false;
  }
  // A string's length in characters (code points), as JSON Schema and the server count:
  // `.length` counts UTF-16 units, two for an emoji, so "maxLength" refused payloads
  // the server takes.
  function length(text) { return Array.from(text).length; }
  // A key of the object itself: `in` also finds "toString", "constructor" and
  // "__proto__" on every object, so a payload with such a key passed the check.
  function has(object, key) { return Object.prototype.hasOwnProperty.call(object, key); }
  function check(schema, value, path, problems) {
    if (schema === true || schema === undefined || schema === null) return;
    if (schema === false) { problems.push(path + ": no value is allowed here"); return; }
    if (schema.type !== undefined) {
      const types = Array.isArray(schema.type) ? schema.type : [schema.type];
      if (!types.some(function (t) { return fits(value, t); })) {
        problems.push(path + ": " + JSON.stringify(value) + " is not of type " + types.join(" or "));
        return;
      }
    }
    if (schema.enum && !schema.enum.some(function (e) { return equal(e, value); })) {
      problems.push(path + ": " + JSON.stringify(value) + " is not one of " + JSON.stringify(schema.enum));
    }
    if ("const" in schema && !equal(schema.const, value)) {
      problems.push(path + ": " + JSON.stringify(value) + " should be " + JSON.stringify(schema.const));
    }
    if (typeof value === "string") {
      if (schema.minLength !== undefined && length(value) < schema.minLength)
        problems.push(path + ": shorter than " + schema.minLength + " characters");
      if (schema.maxLength !== undefined && length(value) > schema.maxLength)
        problems.push(path + ": longer than " + schema.maxLength + " characters");
      const pattern = schema.pattern !== undefined ? regex(schema.pattern) : null;
      if (pattern && !pattern.test(value))
        problems.push(path + ": does not match " + schema.pattern);
    }
    if (typeof value === "number") {
      if (schema.minimum !== undefined && value < schema.minimum) problems.push(path + ": less than " + schema.minimum);
      if (schema.maximum !== undefined && value > schema.maximum) problems.push(path + ": more than " + schema.maximum);
    }
    if (typeOf(value) === "object") {
      (schema.required || []).forEach(function (key) {
        if (!has(value, key)) problems.push(path + ": '" + key + "' is a required property");
      });
      const props = schema.properties || {};
      const patterns = schema.patternProperties || {};
      Object.keys(value).forEach(function (key) {
        // "additionalProperties" is for the keys neither "properties" nor
        // "patternProperties" names; a pattern this browser cannot compile may
        // name the key, so the server decides.
        let named = has(props, key);
        if (named) check(props[key], value[key], path + "." + key, problems);
        Object.keys(patterns).forEach(function (source) {
          const pattern = regex(source);
          if (pattern === null) named = true;
          else if (pattern.test(key)) {
            named = true;
            check(patterns[source], value[key], path + "." + key, problems);
          }
        });
        if (named) return;
        if (schema.additionalProperties === false)
          problems.push(path + ": additional property '" + key + "' is not allowed");
        else if (typeof schema.additionalProperties === "object")
          check(schema.additionalProperties, value[key], path + "." + key, problems);
      });
    }
    if (Array.isArray(value)) {
      if (schema.minItems !== undefined && value.length < schema.minItems) problems.push(path + ": fewer than " + schema.minItems + " items");
      if (schema.maxItems !== undefined && value.length > schema.maxItems) problems.push(path + ": more than " + schema.maxItems + " items");
      if (schema.items && typeof schema.items === "object")
        value.forEach(function (item, i) { check(schema.items, item, path + "[" + i + "]", problems); });
    }
  }
  window.stageflowCheck = function (schema, value) {
    const problems = [];
    check(schema, value, "$", problems);
    return problems;
  };

  document.querySelectorAll("form.input-form").forEach(function (form) {
    const area = form.querySelector("textarea");
    const out = form.querySelector(".check");
    const schema = form.dataset.schema ? JSON.parse(form.dataset.schema) : null;
    function verify() {
      let value;
      try {
        value = JSON.parse(area.value);
      } catch (err) {
        return ["not JSON: " + err.message];
      }
      return schema ? window.stageflowCheck(schema, value) : [];
    }
    area.addEventListener("input", function () {
      const problems = verify();
      out.textContent = problems.length ? problems.join("; ") : "Matches the schema.";
      out.classList.toggle("ok", problems.length === 0);
      area.setAttribute("aria-invalid", problems.length ? "true" : "false");
    });
    form.addEventListener("submit", function (event) {
      const problems = verify();
      if (problems.length) {
        event.preventDefault();
        out.classList.remove("ok");
        out.textContent = "Not sent: " + problems.join("; ");
        area.setAttribute("aria-invalid", "true");
        area.focus();
      }
    });
  });
})();
