"""The browser playground: one static page served by `serve_app.web.routes.router`."""
