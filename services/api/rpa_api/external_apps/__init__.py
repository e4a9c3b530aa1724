"""External applications: OAuth2 clients (client credentials grant) for CI pipelines and other apps."""
