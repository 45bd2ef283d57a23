// The browsable API page (/schema/swagger): Swagger UI from the vendored files, reading
// the OpenAPI document at /schema. A file of its own, because the pages' Content-Security-
// Policy allows no inline script.
window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "/schema",
    dom_id: "#swagger-container",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
    layout: "BaseLayout",
  });
});
